"""A heavy user's week offline fits the default outbox; on reconnect everything arrives exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contract.messages import EndReason, SampleBatch, Status, Zone
from edge.app import Agent
from edge.clock import ManualClock
from edge.config import DEFAULT_OUTBOX_MAX_BYTES, DEFAULT_OUTBOX_MAX_ROWS
from edge.sensor import Reading
from tests.edge.conftest import ThreadCollector, fast_config
from tests.edge.marker import CommitPeer
from tests.support.services import Mosquitto, TcpProxy

DAYS, SESSIONS_PER_DAY, SESSION_S = 7, 10, 3600  # a clinic device: 10 x 60 min a day at 1 Hz


@pytest.mark.slow
async def test_a_week_offline_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path, broker: Mosquitto, marks: CommitPeer
) -> None:
    proxy = TcpProxy(broker.port)
    proxy.cut()
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0) - timedelta(days=DAYS + 1))
    # the marks (test peer) keep up: nothing waits long enough to be sent twice
    cfg = fast_config(
        tmp_path,
        f"mqtt://127.0.0.1:{proxy.port}",
        inflight=50,
        commit_timeout_s=30.0,
        commit_timeout_max_s=60.0,
    )
    assert (cfg.outbox_max_rows, cfg.outbox_max_bytes) == (DEFAULT_OUTBOX_MAX_ROWS, DEFAULT_OUTBOX_MAX_BYTES)
    collector = ThreadCollector(broker.url, f"mf/v1/{cfg.device_id}/up/#")
    try:
        async with Agent(cfg, clock=clock) as agent:
            for _ in range(DAYS):
                day_start = clock.now()
                for _ in range(SESSIONS_PER_DAY):
                    agent.start_session(3)
                    for i in range(SESSION_S):
                        clock.advance(1)
                        if i == 600:
                            agent.change_level(4)
                        agent.record(
                            Reading(clock.now(), 300.0 + i % 7, 1.8, 6000.0 + i % 11, True, Zone.CHEEK_L)
                        )
                    agent.end_session(EndReason.USER)
                    clock.advance(600)
                clock.advance(86_400 - (clock.now() - day_start).total_seconds())
            stats = agent.stats()
            expected = SESSIONS_PER_DAY * DAYS * (SESSION_S // 10 + 3)  # start, 360 batches, event, end
            assert stats.stored == expected
            assert stats.outbox_depth == expected and stats.outbox_dropped == 0 and stats.sent == 0
            assert agent.outbox.size_bytes < DEFAULT_OUTBOX_MAX_BYTES // 2
            proxy.heal()
            async with asyncio.timeout(60):
                await agent.drained()
        # the collector is a second subscriber in this busy process: give it time under a loaded suite
        await collector.wait_for(
            lambda: sum(not t.endswith("/status") for t, _ in collector.raw) >= expected, 90
        )
        messages = collector.messages()
        data = [m for m in messages if not isinstance(m, Status)]
        counts = Counter(m.seq for m in data)
        assert len(counts) == expected and max(counts.values()) == 1  # everything, nothing twice
        births = {m.seq for m in messages if isinstance(m, Status)}
        seen = set(counts) | births
        assert sorted(seen) == list(range(max(seen) + 1))  # no gap in seq
        assert (
            sum(len(m.samples) for m in data if isinstance(m, SampleBatch))
            == DAYS * SESSIONS_PER_DAY * SESSION_S
        )
    finally:
        collector.close()
        proxy.close()
