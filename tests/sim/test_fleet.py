"""A small fleet against a real broker: every agent connects, records sessions, everything arrives."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from contract.codec import decode_uplink
from contract.messages import SessionEnd, SessionStart, Status
from simulators.fleet import Fleet, FleetConfig
from tests.edge.conftest import ThreadCollector
from tests.support.services import Mosquitto


async def test_fleet_runs_sessions_and_everything_arrives(tmp_path: Path, broker: Mosquitto) -> None:
    collector = ThreadCollector(broker.url, "mf/v1/+/up/#")
    try:
        config = FleetConfig(
            mqtt_url=broker.url,
            data_dir=tmp_path,
            devices=8,
            speed=600,
            seed=1,
            first_session_within_s=60,
            extra={"reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        )
        async with Fleet(config) as fleet:
            async with asyncio.timeout(10):
                for agent in fleet.agents:
                    await agent.link.connected.wait()
            assert fleet.stats().connected == 8
            stats = await fleet.run(3.0)
            assert stats.sessions_started >= 8 and stats.sessions_ended == stats.sessions_started
            assert stats.outbox_depth == 0 and stats.outbox_dropped == 0
            assert stats.published >= stats.stored > 0
            per_agent = {a.config.device_id: a.stats().stored for a in fleet.agents}
        now = datetime.now(UTC) + timedelta(hours=1)  # simulated time runs ahead of the wall clock

        def complete() -> bool:
            seqs: dict[str, set[int]] = defaultdict(set)
            for topic, payload in list(collector.raw):
                m = decode_uplink(topic, payload, now)
                if not isinstance(m, Status):
                    seqs[m.device_id].add(m.seq)
            return {d: len(s) for d, s in seqs.items()} == per_agent

        await collector.wait_for(complete, 10)
        messages = [decode_uplink(t, p, now) for t, p in collector.raw]
        starts = {m.session_id for m in messages if isinstance(m, SessionStart)}
        ends = {m.session_id for m in messages if isinstance(m, SessionEnd)}
        assert starts == ends and len(starts) == stats.sessions_started
    finally:
        collector.close()
