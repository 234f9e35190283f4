"""The telemetry spine end to end: real edge agents -> real mosquitto -> ingest -> PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from cloud.ingest.service import IngestService
from contract.messages import EndReason
from edge.app import Agent
from edge.clock import ManualClock
from edge.sensor import DemoSensor
from tests.edge.conftest import fast_config
from tests.support.services import Mosquitto, TcpProxy

pytestmark = pytest.mark.slow
AGENTS, SAMPLES_EACH = 20, 500


@pytest.fixture
def ingest(broker: Mosquitto, database_url: str) -> Iterator[IngestService]:
    migrate(database_url)
    cfg = CloudConfig(database_url=database_url, mqtt_url=broker.url, consumer_id="e2e-ingest-1")
    service = IngestService(cfg, housekeeping=False, late_horizon=timedelta(days=30))
    service.start()
    assert service.consumer.subscribed_event.wait(10)
    try:
        yield service
    finally:
        service.stop()


def counts(dsn: str) -> dict[str, int]:
    """All counts from ONE statement, so one snapshot: counted one by one under READ COMMITTED, a batch
    committing in between would show its messages without its samples."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM samples), (SELECT count(*) FROM sessions),"
            " (SELECT count(*) FROM quarantine), (SELECT count(*) FROM uplink_log WHERE kind <> 'status')"
        ).fetchone()
    assert row is not None
    return dict(zip(("samples", "sessions", "quarantine", "messages"), row, strict=True))


def wait_rows(dsn: str, table: str, n: int, timeout_s: float = 60.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while (c := counts(dsn))[table] < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return c


def record(agent: Agent, clock: ManualClock, sensor: DemoSensor, seconds: int, level: int = 3) -> None:
    agent.start_session(level)
    for _ in range(seconds):
        clock.advance(1.0)
        agent.record(sensor.read(clock.now(), level))
    agent.end_session(EndReason.USER)


async def test_twenty_agents_ten_thousand_samples_each_stored_once(
    tmp_path: Path, broker: Mosquitto, ingest: IngestService, database_url: str
) -> None:
    start = datetime.now(UTC) - timedelta(hours=2)
    agents: list[Agent] = []
    try:
        for i in range(AGENTS):
            clock = ManualClock(start + timedelta(seconds=i))
            cfg = fast_config(
                tmp_path / f"a{i}", broker.url, device_id=f"spine-{i:02d}", samples_per_batch=30
            )
            agent = Agent(cfg, clock=clock)
            await agent.__aenter__()
            agents.append(agent)
            sensor = DemoSensor(seed=i)
            for _ in range(SAMPLES_EACH // 250):  # two sessions of 250 s each
                record(agent, clock, sensor, 250)
                clock.advance(3600)
        async with asyncio.timeout(30):
            for agent in agents:
                await agent.drained()
        stored = sum(a.stats().stored for a in agents)
        c = await asyncio.to_thread(wait_rows, database_url, "messages", stored)
    finally:
        for agent in agents:
            await agent.__aexit__(None, None, None)
    assert c["messages"] == stored
    assert c["samples"] == AGENTS * SAMPLES_EACH  # the primary key (device_id, ts): each exactly once
    assert c["sessions"] == AGENTS * 2
    assert c["quarantine"] == 0
    with psycopg.connect(database_url) as conn:
        gaps = conn.execute(
            "SELECT device_id, count(*), max(seq) - min(seq) + 1 FROM uplink_log WHERE kind <> 'status'"
            " GROUP BY device_id HAVING count(*) <> max(seq) - min(seq) + 1"
        ).fetchall()
        ended = conn.execute("SELECT count(*) FROM sessions WHERE ended_at IS NOT NULL").fetchone()
    assert gaps == [], "every device's sequence is complete: nothing lost"
    assert ended == (AGENTS * 2,)


async def test_agent_offline_then_back_delivers_everything_once(
    tmp_path: Path, broker: Mosquitto, ingest: IngestService, database_url: str
) -> None:
    proxy = TcpProxy(broker.port)
    clock = ManualClock(datetime.now(UTC) - timedelta(days=3))
    cfg = fast_config(tmp_path, f"mqtt://127.0.0.1:{proxy.port}", device_id="spine-offline")
    try:
        async with Agent(cfg, clock=clock) as agent:
            async with asyncio.timeout(10):
                await agent.link.connected.wait()
            proxy.cut()  # the user's phone is out of reach for days
            sensor = DemoSensor(seed=9)
            for _day in range(3):
                record(agent, clock, sensor, 300)
                clock.advance(86_400 - 300)
            assert agent.stats().outbox_depth > 0
            proxy.heal()
            async with asyncio.timeout(30):
                await agent.drained()
            stored = agent.stats().stored
        c = await asyncio.to_thread(wait_rows, database_url, "messages", stored)
    finally:
        proxy.close()
    assert c["messages"] == stored  # every message the agent stored, committed once (uplink_log's key)
    assert c["samples"] == 900 and c["sessions"] == 3 and c["quarantine"] == 0
