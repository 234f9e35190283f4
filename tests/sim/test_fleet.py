"""A fleet against a real broker, and the faults: drops, offline for days, reconnect storm, raw bytes."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from datetime import UTC, datetime
from pathlib import Path

from contract.codec import decode_uplink
from contract.messages import SessionEnd, SessionStart, Status
from simulators.faults import (
    FlakyPath,
    corrupt,
    duplicate_and_reorder,
    flap_schedule,
    publish_raw,
    reconnect_storm,
)
from simulators.fleet import Fleet, FleetConfig
from simulators.scenario import Scenario
from tests.edge.conftest import ThreadCollector
from tests.edge.conftest import marks as marks  # the fixture
from tests.edge.marker import CommitPeer
from tests.support.services import Mosquitto

FAST: dict[str, object] = {
    "reconnect_min_s": 0.05,
    "reconnect_max_s": 0.3,
    "commit_timeout_s": 2.0,
    "commit_timeout_max_s": 10.0,
}
# a broker with no microfleet cloud behind it: outboxes empty on PUBACK
BARE: dict[str, object] = {**FAST, "ack_mode": "broker"}


def _scenario(devices: int, days: float = 3) -> Scenario:
    return Scenario(
        seed=1, devices=devices, days=days, start=datetime(2025, 1, 6, tzinfo=UTC), samples_per_batch=60
    )


async def test_compressed_days_arrive_complete_through_drops_and_an_outage(
    tmp_path: Path, broker: Mosquitto, marks: CommitPeer
) -> None:
    """With the end-to-end acknowledgement: the outboxes empty as the (test peer's) commit marks cover
    everything each device sent."""
    collector = ThreadCollector(broker.url, "mf/v1/+/up/#")
    try:
        async with FlakyPath("127.0.0.1", broker.port) as path:
            cfg = FleetConfig(_scenario(6), path.url(), tmp_path, extra=FAST)
            async with Fleet(cfg) as fleet:
                await fleet.connect()
                path.cut()  # a network drop: everyone reconnects
                async with asyncio.timeout(10):
                    while fleet.stats().connected < 6 or sum(a.stats().connects for a in fleet.agents) < 12:  # noqa: ASYNC110 - polls counters, deadline above
                        await asyncio.sleep(0.02)
                path.block()  # offline for days: the users keep treating
                async with asyncio.timeout(10):
                    while fleet.stats().connected:  # noqa: ASYNC110 - polls counters, deadline above
                        await asyncio.sleep(0.02)
                await fleet.live()
                assert fleet.stats().outbox_depth > 0 and fleet.stats().connected == 0
                path.heal()
                async with asyncio.timeout(20):
                    await fleet.drained()
                next_seq = fleet.next_seqs()
                stats = fleet.stats()
        assert path.cuts >= 2 and stats.sessions_started > 6
        assert stats.committed == stats.stored and stats.sent >= stats.stored and stats.outbox_depth == 0

        await collector.wait_for(lambda: collector.has_every_seq(next_seq), 10)
        msgs = [decode_uplink(t, p, datetime.now(UTC)) for t, p in collector.raw]
        starts = {m.session_id for m in msgs if isinstance(m, SessionStart)}
        assert starts == {m.session_id for m in msgs if isinstance(m, SessionEnd)}
    finally:
        collector.close()


async def test_reconnect_storm_every_device_comes_back(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = FleetConfig(_scenario(30), broker.url, tmp_path, extra=BARE)
    async with Fleet(cfg) as fleet:
        await fleet.connect()
        before = sum(a.stats().connects for a in fleet.agents)
        await reconnect_storm(broker, 0.3, kill=True)
        async with asyncio.timeout(20):
            while sum(a.stats().connects for a in fleet.agents) < before + 30 or fleet.stats().connected < 30:  # noqa: ASYNC110 - polls counters, deadline above
                await asyncio.sleep(0.05)


async def test_clock_skew_shifts_the_device_time(tmp_path: Path, broker: Mosquitto) -> None:
    collector = ThreadCollector(broker.url, "mf/v1/+/up/status")
    try:
        cfg = FleetConfig(_scenario(2), broker.url, tmp_path, clock_skew_s={1: 7200.0}, extra=BARE)
        async with Fleet(cfg) as fleet:
            await fleet.connect()

            def both() -> bool:
                return len({t for t, _ in collector.raw}) == 2

            await collector.wait_for(both, 10)
        births = {
            m.device_id: m.ts
            for m in (decode_uplink(t, p, datetime.now(UTC)) for t, p in collector.raw)
            if isinstance(m, Status)
        }
        assert 7100 < (births["sim-00001"] - births["sim-00000"]).total_seconds() < 7300
    finally:
        collector.close()


async def test_raw_duplicates_reordered_and_corrupt_payloads_reach_the_broker(broker: Mosquitto) -> None:
    collector = ThreadCollector(broker.url, "mf/v1/raw-1/up/#")
    try:
        rng = random.Random(2)
        good = [("mf/v1/raw-1/up/event", f'{{"n":{i}}}'.encode()) for i in range(10)]
        sent = duplicate_and_reorder(good, rng, duplicates=0.5)
        bad = [
            (t, corrupt(p, rng, how))
            for (t, p), how in zip(good, ("truncate", "flip", "not_json", "wrong_schema"), strict=False)
        ]
        assert all(b != p for (_, b), (_, p) in zip(bad, good, strict=False))
        n = await publish_raw(broker.url, sent + bad)
        assert n == len(sent) + 4 and len(sent) > 10 and sent != good
        await collector.wait_for(lambda: len(collector.raw) == n, 10)
    finally:
        collector.close()


async def test_connectivity_challenged_users_lose_their_link_and_nothing_else(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The persona's flaps_per_day drops the real agent's connection at virtual times (a Poisson
    process); each agent reconnects by itself and every message still arrives."""
    collector = ThreadCollector(broker.url, "mf/v1/+/up/#")
    try:
        sc = dataclasses.replace(_scenario(3, days=4), weights={"connectivity_challenged": 1.0})
        cfg = FleetConfig(sc, broker.url, tmp_path, extra=BARE)
        async with Fleet(cfg) as fleet:
            await fleet.connect()
            per_days = [fleet.personas[a.config.device_id].flaps_per_day for a in fleet.agents]
            await fleet.live()
            async with asyncio.timeout(20):
                await fleet.drained()
            next_seq = fleet.next_seqs()
            connects = [a.stats().connects for a in fleet.agents]
            drops = fleet.counters.link_drops
        # every drop of the seeded schedule happened (3 devices x ~3 a day x 4 days), whatever the speed of
        # the machine (each drop holds virtual time until the agent is back)
        scheduled = sum(
            len(flap_schedule(random.Random(f"{sc.seed}:flaps:{i}"), sc.days, per_day))
            for i, per_day in zip(cfg.indices, per_days, strict=True)
        )
        assert drops == scheduled and drops >= 3 * 2
        # a first connect each, and a reconnect after every drop but perhaps each device's last one
        assert sum(connects) >= drops

        await collector.wait_for(lambda: collector.has_every_seq(next_seq), 10)
    finally:
        collector.close()
