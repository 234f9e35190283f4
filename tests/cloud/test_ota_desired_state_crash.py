"""Retained desired state survives a broker crash within its save window. On the production broker
configuration (autosave_interval 5: a SIGKILL loses what the broker took since its last save), a device's
protocol (published by the one-shot `protocol publish`), OTA job (the OTA service) and safety gate (the
alert engine) are published, the broker is SIGKILLed right away and restarted: the owners of desired
state send it again when their connection comes back, and the device, subscribing afresh with its own
identity, gets all three. Nothing used to send them again: the device got none."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from psycopg import AsyncConnection

from cloud.alerts.service import AlertService
from cloud.db.migrate import migrate
from cloud.ota import store
from cloud.ota.artifacts import add_release
from cloud.ota.rollout import RolloutPlan
from cloud.ota.service import OtaService, OtaServiceConfig
from cloud.protocols.publish import Targets, publish
from contract import topics
from contract.mqtturl import parse_mqtt_url
from contract.protocol import starter_protocol
from contract.signing import SigningKey
from tests.cloud.test_alerts_engine_support import engine_config, query, wait_for
from tests.cloud.test_ota_rollout import KEY, TRUST, seed
from tests.support.services import ProductionBroker

pytestmark = pytest.mark.slow
DEVICE = "keep-1"
KINDS = (topics.Downlink.PROTOCOL, topics.Downlink.OTA, topics.Downlink.GATE)


def downlinks_of_a_fresh_subscriber(url: str, timeout_s: float) -> set[str]:
    """Connect as the device (clean session), subscribe to its downlinks and collect which desired-state
    kinds arrive within timeout_s (retained ones right after the SUBACK, resent ones as they come)."""
    got: set[str] = set()
    done = threading.Event()
    addr = parse_mqtt_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=DEVICE, protocol=mqtt.MQTTv5)
    client.username_pw_set(addr.username, addr.password)

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload:
            got.add(msg.topic.rsplit("/", 1)[-1])
        if all(k.value in got for k in KINDS):
            done.set()

    client.on_message = on_message
    client.on_connect = lambda c, *_a: c.subscribe(topics.downlink_filter(DEVICE), qos=1)
    client.connect(addr.host, addr.port)
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return got


@contextlib.asynccontextmanager
async def ota_service(prod: ProductionBroker, dsn: str) -> AsyncIterator[OtaService]:
    service = OtaService(
        OtaServiceConfig(dsn, prod.service_url("svc-ota"), "http://127.0.0.1:9/a", tick_s=0.1)
    )
    task = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        service.request_stop()
        await asyncio.wait_for(task, 15)


async def test_desired_state_is_sent_again_after_a_broker_crash(
    prod: ProductionBroker, database_url: str, tmp_path: Path
) -> None:
    dsn = database_url
    migrate(dsn)
    device_url = prod.device(DEVICE)
    src = tmp_path / "fw.bin"
    src.write_bytes(b"firmware" * 100)
    now = datetime.now(UTC)
    cfg = engine_config(prod.service_url("svc-alerts"), dsn, consumer_id="alerts-9")
    with AlertService(cfg):
        async with (
            ota_service(prod, dsn) as ota,
            await AsyncConnection.connect(dsn, autocommit=True) as conn,
        ):
            await asyncio.wait_for(ota.subscribed.wait(), 15)
            await seed(conn, [DEVICE])
            await add_release(
                conn,
                tmp_path / "store",
                src,
                version="1.1.0",
                version_code=2,
                models=("mf-home-1",),
                key=KEY,
                now=now,
            )
            # the three desired states, within a second or two: the gate, the OTA job, the protocol
            await conn.execute(
                "insert into device_profiles (device_id, epilepsy) values (%s, true)", (DEVICE,)
            )
            rid = await store.create_rollout(
                conn,
                "1.1.0",
                store.Targets(),
                RolloutPlan(percents=(100,)),
                store=tmp_path / "store",
                trust=TRUST,
                now=now,
            )
            result = await publish(
                conn,
                starter_protocol(now),
                Targets(devices=(DEVICE,)),
                SigningKey.generate(),
                prod.service_url("svc-ota"),
                override_gate="test: the gate is set at the same time",
            )
            assert result.sent == 1
            await asyncio.to_thread(
                wait_for,
                lambda: (
                    query(
                        dsn,
                        "select (select count(*) from safety_gates where published_version = version and blocked)"
                        " + (select count(*) from ota_device_jobs where rollout_id = %s and state = 'sent')",
                        rid,
                    )
                    == [(2,)]
                ),
                10,
                "the gate and the OTA job taken by the broker",
            )
            # the broker crashes right away (before its next save), and comes back
            prod.stop(kill=True)
            prod.start()
            got = await asyncio.to_thread(downlinks_of_a_fresh_subscriber, device_url, 30)
            assert got >= {k.value for k in KINDS}, f"the device got only {sorted(got)} after the crash"
            assert ota.resent >= 2  # the protocol and the job
