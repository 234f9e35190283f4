"""The ingest service on cloud.runtime, real broker and database: commit marks reach the device (0x10 is
not a failure, a refusal is unclaimed and sent again), and a scale-in (one of two members stopped on
purpose) strands nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench._common import Publisher as BenchPublisher
from bench._common import fleet_traffic, to_wire, wait_until
from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from cloud.identity import provision
from cloud.identity.dynsec import DynsecClient
from cloud.ingest.service import IngestService, MarkSender, Stats
from cloud.runtime.db import Database
from cloud.runtime.publisher import Publisher
from contract import topics
from contract.codec import decode_downlink
from contract.messages import CommitMark, DeviceState, Status
from tests.support.services import Mosquitto, secure_broker

pytestmark = pytest.mark.slow


@pytest.fixture
def dsn(database_url: str) -> str:
    migrate(database_url)
    return database_url


def one(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


class Device:
    """The device's side of the downlinks: the commit marks it receives."""

    def __init__(self, broker: Mosquitto, device_id: str) -> None:
        self.marks: list[CommitMark] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe(topics.downlink_filter(device_id), qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        down = decode_downlink(msg.topic, bytes(msg.payload))
        if isinstance(down, CommitMark):
            self.marks.append(down)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def database(dsn: str) -> Iterator[Database]:
    with Database(dsn, name="test-marks") as db:
        yield db


def test_the_commit_mark_reaches_the_device(broker: Mosquitto, dsn: str) -> None:
    cfg = CloudConfig(
        database_url=dsn,
        mqtt_url=broker.url,
        consumer_id="ingest-m1",
        batch_max_delay_s=0.02,
        mark_delay_s=0.2,
        mark_interval_s=0.1,
    )
    device = Device(broker, "mk-1")
    svc = IngestService(cfg, housekeeping=False)
    pub = BenchPublisher(broker.url, "mk-pub")
    try:
        svc.start()
        assert svc.consumer.subscribed_event.wait(10)
        now = datetime.now(UTC)  # a device numbers its messages from 0: the mark starts at -1
        pub.publish_all(
            [to_wire(Status(device_id="mk-1", seq=s, ts=now, state=DeviceState.ONLINE)) for s in range(0, 6)]
        )
        wait_until(lambda: any(m.through == 5 for m in device.marks), 10, what="the mark through 5")
        assert "marks_sent=" in svc.stats.line() and svc.stats.marks_sent >= 1
    finally:
        pub.close()
        svc.stop(grace_s=5)
        device.close()


def due(dsn: str, device_id: str, through: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO commit_marks (device_id, through, requested, advanced_at) VALUES (%s, %s, true, now())",
            (device_id, through),
        )


def test_a_mark_the_broker_refuses_is_sent_again_and_0x10_is_not_a_failure(
    broker: Mosquitto, dsn: str, database: Database
) -> None:
    # no subscriber: 0x10, the device is offline without a session; it asks again with a SyncRequest
    due(dsn, "mk-off", 3)
    stats = Stats()
    with Publisher(broker.url, "mk-pub-plain") as plain:
        assert plain.wait_connected(10)
        assert MarkSender(database, plain, stats, delay_s=0, every=1).round() == 1
    assert (stats.marks_sent, stats.marks_failed) == (1, 0)
    assert one(dsn, "SELECT requested FROM commit_marks WHERE device_id = 'mk-off'") is False
    # refused (0x87: this identity may not publish there): unclaimed, due again at the next claim
    due(dsn, "mk-ref", 7)
    secure = secure_broker("admin-pw")
    secure.start()
    try:
        with DynsecClient(secure.url, "admin", "admin-pw") as admin:
            provision.bootstrap(admin)
            creds = provision.provision_device(admin, "mk-other", secure.url)
        with Publisher(creds.url_with_secret(), "mk-other") as refused:
            assert refused.wait_connected(10)
            sender = MarkSender(database, refused, stats, delay_s=0, every=1)
            assert sender.round() == 1
            assert (stats.marks_sent, stats.marks_failed) == (1, 1)
            assert one(dsn, "SELECT requested FROM commit_marks WHERE device_id = 'mk-ref'") is True
            assert sender.round() == 1  # claimed again
    finally:
        secure.close()


def test_scale_in_one_of_two_members_stops_and_the_other_stores_everything(
    broker: Mosquitto, dsn: str
) -> None:
    cfgs = [
        CloudConfig(
            database_url=dsn, mqtt_url=broker.url, consumer_id=f"ingest-sc{i}", batch_max_delay_s=0.02
        )
        for i in (1, 2)
    ]
    services = [IngestService(c, housekeeping=False) for c in cfgs]
    traffic = fleet_traffic(20, 2, batches=3, samples_per_batch=5)
    pub = BenchPublisher(broker.url, "sc-pub")
    try:
        for s in services:
            s.start()
        for s in services:
            assert s.consumer.subscribed_event.wait(10)
        services[0].stop(grace_s=10)  # SIGTERM: leaves the group
        pub.publish_all(traffic.messages)
        wait_until(
            lambda: one(dsn, "SELECT count(*) FROM uplink_log") == traffic.uplinks, 20, what="all stored"
        )
        assert one(dsn, "SELECT count(DISTINCT consumer) FROM uplink_log") == 1
    finally:
        pub.close()
        for s in services:
            if not s.stopped.is_set():
                s.stop(grace_s=5)
