"""Nothing lost and nothing stalled, as deployed: real edge agents on the production broker configuration
(the compose entrypoint, dynamic security, per-service and per-device identities bound to their client ids,
the real save interval) and real ingest processes, under the faults that used to lose data:

- a broker restart while every ingest process is down (mosquitto then acknowledges publishes to the shared
  group with 0x10 "no matching subscribers" and drops them),
- a broker SIGKILL (it loses what it queued since its last save) and a broker restart while the consumers
  reconnect,
- consumer SIGKILLs (a supervisor restarts them) and scaling ingest in from three processes to two.

Every test checks the end-to-end promise: every sequence number each agent put in its outbox is stored
exactly once, and the agents' outboxes empty only as the cloud's commit marks advance (a PUBACK deletes
nothing)."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud.db.migrate import migrate
from edge.link import LinkStats
from tests.edge.conftest import fast_config
from tests.support.fleet import AgentFleet, Ingest, check_exactly_once
from tests.support.services import ProductionBroker, production_broker

pytestmark = pytest.mark.slow
DEVICES = 6
SAMPLES_PER_MESSAGE = 5
MESSAGE_GAP_S = 0.05  # per agent: ~20 messages/s each, ~120/s for the fleet


def fault_fleet(tmp_path: Path, broker: ProductionBroker, commit_timeout_s: float) -> AgentFleet:
    """Real agents with their own clientid-bound credentials, recording sessions while the faults happen."""
    urls = broker.devices([f"fault-{i:02d}" for i in range(DEVICES)])
    configs = [
        fast_config(
            tmp_path / device_id,
            url,
            device_id=device_id,
            samples_per_batch=SAMPLES_PER_MESSAGE,
            session_expiry_s=600,
            commit_timeout_s=commit_timeout_s,
            commit_timeout_max_s=3 * commit_timeout_s,
        )
        for device_id, url in urls.items()
    ]
    return AgentFleet(configs, samples_per_message=SAMPLES_PER_MESSAGE, message_gap_s=MESSAGE_GAP_S)


@dataclass
class Platform:
    dsn: str
    broker: ProductionBroker
    ingest: Ingest
    tmp_path: Path


@pytest.fixture
def platform(tmp_path: Path, database_url: str) -> Iterator[Platform]:
    migrate(database_url)
    broker = production_broker(tmp_path)
    try:
        ingest = Ingest(database_url, broker.service_url("svc-ingest"), tmp_path)
        try:
            yield Platform(database_url, broker, ingest, tmp_path)
        finally:
            ingest.close()
    finally:
        broker.close()


async def run_with_fault(
    p: Platform,
    consumers: int,
    fault: Callable[[], Awaitable[None]],
    commit_timeout_s: float = 2.0,
    drain_timeout_s: float = 90.0,
) -> list[LinkStats]:
    """The agents' link stats as the run ended."""
    for i in range(1, consumers + 1):
        p.ingest.start(i)
    for i in range(1, consumers + 1):
        p.ingest.wait_subscribed(i)  # before the first message: a publish to an empty group is not taken
    try:
        async with fault_fleet(p.tmp_path, p.broker, commit_timeout_s).running() as fleet:
            await asyncio.sleep(1.5)  # traffic flows before the fault
            await fault()
            await asyncio.sleep(1.5)  # and after it
            await fleet.stop_traffic()
            await fleet.committed(drain_timeout_s)
            await asyncio.to_thread(check_exactly_once, p.dsn, fleet)
            return [dataclasses.replace(d.agent.link.stats) for d in fleet.devices]
    except BaseException:
        print(p.ingest.logs())
        raise


async def test_broker_restart_while_every_consumer_is_down(platform: Platform) -> None:
    p = platform

    async def fault() -> None:
        for i in list(p.ingest.procs):
            await asyncio.to_thread(p.ingest.signal, i, signal.SIGTERM)  # leave: the group has no member
        await asyncio.to_thread(p.broker.stop)
        await asyncio.to_thread(p.broker.start)
        await asyncio.sleep(2.0)  # devices publish into the empty group: acknowledged with 0x10, dropped
        p.ingest.start(1)
        p.ingest.start(2)

    await run_with_fault(p, 2, fault)


async def test_broker_sigkill_and_a_restart_while_consumers_reconnect(platform: Platform) -> None:
    p = platform

    async def fault() -> None:
        await asyncio.to_thread(p.broker.stop, True)  # SIGKILL: what it queued since its last save is gone
        await asyncio.sleep(0.5)
        await asyncio.to_thread(p.broker.start)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(p.broker.stop)  # a clean restart while the consumers reconnect
        await asyncio.to_thread(p.broker.start)

    await run_with_fault(p, 2, fault)


async def test_consumer_sigkills_with_a_supervisor_restarting_them(platform: Platform) -> None:
    p = platform

    async def fault() -> None:
        for i in (1, 2):
            await asyncio.to_thread(p.ingest.signal, i, signal.SIGKILL)  # a crash keeps its session ...
            await asyncio.sleep(0.7)
            p.ingest.start(i)  # ... and its supervisor restarts it with the same consumer id

    await run_with_fault(p, 3, fault)


async def test_scaling_ingest_in_from_three_processes_to_two_strands_nothing(platform: Platform) -> None:
    p = platform

    async def fault() -> None:
        await asyncio.to_thread(p.ingest.signal, 3, signal.SIGTERM)  # scale in: ingest-3 leaves for good

    # The devices' commit timeout (40 s) is longer than the test may take to commit everything (30 s): a
    # message stranded in the stopped member's session could only come back through a device's re-send
    # timer. The stopped member left the group cleanly, so none is, and no device re-sent anything.
    link_stats = await run_with_fault(p, 3, fault, commit_timeout_s=40.0, drain_timeout_s=30.0)
    assert [s.resent for s in link_stats] == [0] * DEVICES
    assert all(s.committed > 0 and s.not_taken == 0 for s in link_stats)
