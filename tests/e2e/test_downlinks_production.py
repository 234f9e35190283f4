"""Every downlink kind the contract defines reaches a real edge agent through the production ACL: each
published by the service identity that owns it (svc-ota: protocol, ota; svc-alerts: notice, gate;
svc-ingest: committed, from a real ingest service), on the production broker configuration (compose
entrypoint, dynamic security, the device's credentials bound to its client id), and each has its effect
on the agent: the protocol is applied, the firmware job is taken up (and reported), the notice is shown,
the gate blocks sessions, and the commit marks empty the outbox. The same downlink from another service's
identity is refused (0x87)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import psycopg
import pytest

from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from cloud.ingest.service import IngestService
from cloud.runtime.publisher import Outgoing, Publisher
from contract import topics
from contract.codec import encode
from contract.messages import EndReason, Notice, SafetyGate, Severity
from contract.protocol import starter_protocol
from contract.signing import SigningKey
from edge.app import Agent
from edge.notices import SessionRefused
from edge.sensor import DemoSensor
from tests.cloud.test_api_support import wait_for
from tests.edge.conftest import fast_config
from tests.edge.test_ota_support import install_job, make_release, trust_file
from tests.support.services import ProductionBroker

pytestmark = pytest.mark.slow
DEVICE = "downlink-dev-1"


def scalar(dsn: str, sql: str, *args: object) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql, args).fetchone()  # type: ignore[arg-type]
    return int(row[0]) if row and row[0] is not None else 0


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    await asyncio.to_thread(wait_for, predicate, timeout_s, what)


def publish(url: str, client_id: str, topic: str, payload: bytes, retain: bool) -> int | None:
    with Publisher(url, client_id) as pub:
        assert pub.wait_connected(10), f"{client_id} could not connect"
        (outcome,) = pub.publish_many([Outgoing(topic, payload, retain)], 10)
    return outcome.reason


async def test_every_downlink_kind_reaches_a_real_agent_from_its_service(
    tmp_path: Path, prod: ProductionBroker, database_url: str
) -> None:
    migrate(database_url)
    key = SigningKey.generate()
    trust = trust_file(tmp_path / "trusted.json", key)
    ingest = IngestService(
        CloudConfig(
            database_url=database_url,
            mqtt_url=prod.service_url("svc-ingest"),
            consumer_id="ingest-1",
            mark_delay_s=0.2,
            mark_interval_s=0.1,
        ),
        housekeeping=False,
        late_horizon=timedelta(days=30),
    )
    ingest.start()
    ota, alerts = prod.service_url("svc-ota"), prod.service_url("svc-alerts")
    cfg = fast_config(
        tmp_path / "agent",
        prod.device(DEVICE),
        device_id=DEVICE,
        trusted_keys_file=trust,
        session_expiry_s=600,
    )
    try:
        assert ingest.consumer.subscribed_event.wait(10)
        async with Agent(cfg) as agent:
            async with asyncio.timeout(10):
                await agent.link.connected.wait()

            # committed (svc-ingest, from the real ingest service): a session's messages leave the outbox
            sensor, t = DemoSensor(seed=1), datetime.now(UTC) - timedelta(minutes=5)
            agent.start_session(3)
            for i in range(20):
                agent.record(sensor.read(t + timedelta(seconds=i), 3))
            agent.end_session(EndReason.USER)
            async with asyncio.timeout(20):
                await agent.drained()
            assert agent.link.stats.committed >= agent.stats().stored > 0

            # protocol (svc-ota): signed, retained; the agent verifies and applies it
            protocol = msgspec.structs.replace(starter_protocol(datetime.now(UTC)), version=7)
            doc = msgspec.json.encode(key.sign(protocol))
            topic = topics.downlink(DEVICE, topics.Downlink.PROTOCOL)
            assert await asyncio.to_thread(publish, alerts, "alerts-9-down", topic, doc, True) == 0x87
            assert await asyncio.to_thread(publish, ota, "ota-test-1", topic, doc, True) == 0
            await until(lambda: agent.protocols.reported() == (protocol.protocol_id, 7), "protocol applied")

            # ota (svc-ota): a signed firmware job; the agent takes it up and reports on up/ota (stored)
            release = make_release(tmp_path / "artifacts", key, "9.9.9", 999)
            job = install_job(DEVICE, "job-downlinks-1", release, "http://127.0.0.1:9")  # nothing listens
            topic = topics.downlink(DEVICE, topics.Downlink.OTA)
            assert await asyncio.to_thread(publish, ota, "ota-test-2", topic, encode(job), True) == 0
            await until(
                lambda: (
                    scalar(database_url, "select count(*) from ota_reports where job_id = %s", job.job_id) > 0
                ),
                "the firmware job's report stored",
            )

            # notice (svc-alerts): shown to the user, which the agent reports as an event
            notice = Notice(
                device_id=DEVICE,
                ts=datetime.now(UTC),
                notice_id="notice-downlinks-1",
                severity=Severity.WARNING,
                text="Your skin needs a rest day.",
            )
            topic = topics.downlink(DEVICE, topics.Downlink.NOTICE)
            assert await asyncio.to_thread(publish, ota, "ota-test-3", topic, encode(notice), False) == 0x87
            assert (
                await asyncio.to_thread(publish, alerts, "alerts-9-down", topic, encode(notice), False) == 0
            )
            await until(
                lambda: (
                    scalar(
                        database_url,
                        "select count(*) from device_events where event = 'notice_shown' and detail = %s",
                        notice.notice_id,
                    )
                    == 1
                ),
                "notice shown",
            )

            # gate (svc-alerts): retained; while blocked the agent refuses to start a session
            gate = SafetyGate(device_id=DEVICE, ts=datetime.now(UTC), blocked=True, reasons=("pregnancy",))
            topic = topics.downlink(DEVICE, topics.Downlink.GATE)
            assert await asyncio.to_thread(publish, alerts, "alerts-9-down", topic, encode(gate), True) == 0
            await until(lambda: agent.notices.gate is not None and agent.notices.gate.blocked, "gate blocked")
            with pytest.raises(SessionRefused):
                agent.start_session(3)

            # committed from anyone but svc-ingest is refused: a device's outbox cannot be emptied by others
            mark = topics.downlink(DEVICE, topics.Downlink.COMMITTED)
            refused = await asyncio.to_thread(publish, alerts, "alerts-9-down", mark, b"{}", False)
            assert refused == 0x87
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await agent.drained()  # the refused-session event is committed too
    finally:
        ingest.stop(grace_s=5)
