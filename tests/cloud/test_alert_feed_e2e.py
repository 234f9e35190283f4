"""The alert feed (MICROFLEET_ALERT_FEED=committed, docs/decisions/alert-feed.md) on the production broker
(dynamic security, the service identities) with real ingest, the real alert engine and PostgreSQL: a rule
fires from device traffic exactly as in uplinks mode; a device cannot publish or read the feed; the
engine being stopped does not stop ingest; an ingest SIGKILL between its commit and the feed's PUBACK
still gets every message evaluated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloud.alerts.feed_source import FeedSource
from cloud.alerts.service import AlertService
from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from cloud.ingest.service import IngestService
from cloud.runtime.consumer import Consumer
from cloud.runtime.publisher import Publisher
from contract import topics
from contract.codec import encode_feed
from contract.messages import CommittedBatch, UplinkMessage
from tests.cloud.test_alerts_engine_support import (
    Clock,
    engine_config,
    overuse_days,
    query,
    wait_for,
    wire,
)
from tests.support.services import ROOT, ProductionBroker

pytestmark = pytest.mark.slow
NOON = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
HORIZON = timedelta(days=3650)  # the traffic is dated 2024 (the engine's clock is moved there)


@pytest.fixture
def dsn(database_url: str) -> str:
    migrate(database_url)
    return database_url


def send(prod: ProductionBroker, device: str, messages: list[UplinkMessage]) -> None:
    """Publish as the device (its own credentials and client id); every PUBACK must be a success."""
    with Publisher(prod.device(device), device) as pub:
        assert pub.wait_connected(10)
        outcomes = pub.publish_many([(*wire(m), False) for m in messages], 10)
    assert all(o.accepted for o in outcomes), outcomes


def ingest_config(prod: ProductionBroker, dsn: str, feed: str, consumer_id: str = "ingest-1") -> CloudConfig:
    return CloudConfig(
        database_url=dsn,
        mqtt_url=prod.service_url("svc-ingest"),
        consumer_id=consumer_id,
        batch_max_delay_s=0.02,
        alert_feed=feed,
        mark_interval_s=0.2,
    )


def alerts_config(prod: ProductionBroker, dsn: str, feed: str) -> Any:
    return engine_config(prod.service_url("svc-alerts"), dsn, "alerts-1", feed=feed)


@pytest.fixture
def ingest_factory(prod: ProductionBroker, dsn: str) -> Iterator[Callable[[str], IngestService]]:
    made: list[IngestService] = []

    def make(feed: str) -> IngestService:
        svc = IngestService(ingest_config(prod, dsn, feed), housekeeping=False, late_horizon=HORIZON)
        svc.start()
        made.append(svc)
        assert svc.consumer.subscribed_event.wait(10)
        return svc

    yield make
    for svc in made:
        if not svc.stopped.is_set():
            svc.stop(leave=False)


def o5_alerts(dsn: str) -> list[tuple[object, ...]]:
    return query(
        dsn,
        "select device_id, rule_id, episode_key, severity::text, state, count from alerts "
        "where rule_id = 'O5' order by device_id",
    )


@pytest.mark.parametrize("feed", ["uplinks", "committed"])
def test_a_rule_fires_from_device_traffic_in_either_mode(
    prod: ProductionBroker, dsn: str, ingest_factory: Callable[[str], IngestService], feed: str
) -> None:
    ingest = ingest_factory(feed)
    with AlertService(alerts_config(prod, dsn, feed), clock=Clock(NOON), gate=False) as svc:
        assert isinstance(svc.consumer, FeedSource) == (feed == "committed")
        assert svc.consumer.subscribed_event.wait(10)
        traffic = overuse_days("feed-1", NOON, range(-5, 1))  # 6 days of use in 7: O5
        send(prod, "feed-1", traffic)
        wait_for(lambda: o5_alerts(dsn), 20.0, what="the O5 alert")
        wait_for(lambda: svc.messages >= len(traffic), 20.0, what="every message evaluated")
        assert o5_alerts(dsn) == [("feed-1", "O5", "rolling", "info", "open", 1)]
        assert query(dsn, "select count(*) from alert_history where device_id = 'feed-1'") == [(6,)]
        if feed == "committed":
            assert ingest.feed is not None and ingest.feed.fed == len(traffic)
            assert ingest.feed.failed == 0
            assert svc.consumer.redeliveries == 0
        else:
            assert ingest.feed is None


def test_only_ingest_may_publish_the_feed_and_no_device_may_read_it(prod: ProductionBroker) -> None:
    payload = encode_feed(CommittedBatch(consumer="forged", messages=()))
    for name, url in (
        ("dev-feed", prod.device("dev-feed")),
        ("alerts-9", prod.service_url("svc-alerts")),
        ("sim-1", prod.service_url("svc-simulator")),
        ("ingest-9", prod.service_url("svc-ingest")),
    ):
        client_id = name if name != "sim-1" else "svc-sim-1"
        with Publisher(url, client_id) as pub:
            assert pub.wait_connected(10), name
            [outcome] = pub.publish_many([(topics.COMMITTED_FEED, payload, False)], 10)
        if name.startswith("ingest"):
            assert outcome.accepted, outcome  # 0x10 here: no engine subscribed
        else:
            assert outcome.reason == 0x87, (name, outcome)  # not authorised
    for filt in (topics.shared("alerts", topics.COMMITTED_FEED), topics.COMMITTED_FEED):
        c = Consumer(mqtt_url=prod.device("dev-feed"), client_id="dev-feed", filters=[filt], on_message=print)
        c.start()
        try:
            assert c.refused_event.wait(10), f"the device's subscription to {filt} was not refused"
        finally:
            c.stop()


def test_a_stopped_engine_does_not_stop_ingest_and_gets_the_feed_when_back(
    prod: ProductionBroker, dsn: str, ingest_factory: Callable[[str], IngestService]
) -> None:
    ingest = ingest_factory("committed")
    cfg = alerts_config(prod, dsn, "committed")
    svc = AlertService(cfg, clock=Clock(NOON), gate=False)
    svc.start()
    assert svc.consumer.subscribed_event.wait(10)
    svc.stop(leave=False)  # a crash or restart: the session (and its shared subscription) is kept
    traffic = [m for d in ("down-1", "down-2") for m in overuse_days(d, NOON, range(-5, 1))]
    for d in ("down-1", "down-2"):
        send(prod, d, [m for m in traffic if m.device_id == d])
    feed = ingest.feed
    assert feed is not None
    # ingest stores and acknowledges everything while the engine is down: the feed queues in its session
    wait_for(lambda: feed.fed == len(traffic), 20.0, what="every batch fed while the engine is down")
    assert feed.failed == 0 and feed.pending() == 0 and ingest.consumer.redeliveries == 0
    assert query(dsn, "select count(*) from sessions where device_id like %s", "down-%") == [(12,)]
    assert o5_alerts(dsn) == []
    with AlertService(cfg, clock=Clock(NOON), gate=False) as back:
        wait_for(lambda: len(o5_alerts(dsn)) == 2, 20.0, what="O5 for both devices from the queued feed")
        assert back.messages == len(traffic)


def test_an_ingest_sigkill_between_commit_and_feed_still_gets_every_message_evaluated(
    prod: ProductionBroker, dsn: str, tmp_path: Path
) -> None:
    """No engine has subscribed yet: the broker answers the feed with 0x10 ("no matching subscribers",
    it would drop it), so ingest commits each batch and holds its originals. SIGKILL it there; once the
    engine subscribes and ingest is back, the broker re-sends the originals, ingest re-writes them (nothing
    changes in the database) and feeds them: the rule fires."""
    log_path = tmp_path / "ingest.log"
    env = {
        **os.environ,
        "MICROFLEET_DATABASE_URL": dsn,
        "MICROFLEET_MQTT_URL": prod.service_url("svc-ingest"),
        "MICROFLEET_ALERT_FEED": "committed",
        "MICROFLEET_BATCH_MAX_DELAY_S": "0.02",
        "PYTHONPATH": str(ROOT),
    }
    cmd = [sys.executable, "-m", "cloud.ingest", "--consumer-id", "ingest-7", "--no-housekeeping"]
    cmd += ["--late-horizon-days", str(HORIZON.days)]

    def start() -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            return subprocess.Popen(cmd, env=env, stdout=log, stderr=log)

    def subscribed(times: int) -> bool:
        return log_path.read_text().count("ingest-7 subscribed to ") >= times

    proc = start()
    try:
        wait_for(lambda: subscribed(1), 30, "ingest subscribed")
        traffic = overuse_days("kill-1", NOON, range(-5, 1))
        send(prod, "kill-1", traffic)
        wait_for(
            lambda: query(dsn, "select count(*) from sessions where device_id = 'kill-1'") == [(6,)],
            20.0,
            what="the batches committed",
        )
        wait_for(
            lambda: "alert feed:" in log_path.read_text(), 20.0, what="ingest reporting the feed not taken"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        rows = query(dsn, "select count(*) from samples where device_id = 'kill-1'")
        with AlertService(alerts_config(prod, dsn, "committed"), clock=Clock(NOON), gate=False) as svc:
            assert svc.consumer.subscribed_event.wait(10)
            assert o5_alerts(dsn) == []
            proc = start()
            wait_for(lambda: subscribed(2), 30, "ingest back")
            wait_for(lambda: o5_alerts(dsn), 20.0, what="the O5 alert from the re-sent batches")
            wait_for(lambda: svc.messages >= len(traffic), 20.0, what="every message evaluated")
        assert query(dsn, "select count(*) from samples where device_id = 'kill-1'") == rows
        assert o5_alerts(dsn) == [("kill-1", "O5", "rolling", "info", "open", 1)]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
