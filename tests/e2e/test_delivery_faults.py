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
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from cloud.db.migrate import migrate
from contract.messages import EndReason
from edge.app import Agent
from edge.clock import ManualClock
from edge.link import LinkStats
from edge.sensor import DemoSensor
from tests.edge.conftest import fast_config
from tests.support.services import ROOT, ProductionBroker, production_broker

pytestmark = pytest.mark.slow
DEVICES = 6
SAMPLES_PER_MESSAGE = 5
MESSAGE_GAP_S = 0.05  # per agent: ~20 messages/s each, ~120/s for the fleet


@dataclass
class Ingest:
    """Real `microfleet ingest` processes (python -m cloud.ingest), each with its stable consumer id."""

    dsn: str
    mqtt_url: str
    logdir: Path
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    starts: dict[int, int] = field(default_factory=dict)

    def start(self, i: int) -> None:
        env = {
            **os.environ,
            "MICROFLEET_DATABASE_URL": self.dsn,
            "MICROFLEET_MQTT_URL": self.mqtt_url,
            "MICROFLEET_MARK_DELAY_S": "0.3",
            "MICROFLEET_MARK_INTERVAL_S": "0.2",
            "MICROFLEET_BATCH_MAX_DELAY_S": "0.05",
            "PYTHONPATH": str(ROOT),
        }
        log = open(self.logdir / f"ingest-{i}.log", "ab")  # noqa: SIM115 - owned by the process
        self.procs[i] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cloud.ingest",
                "--consumer-id",
                f"ingest-{i}",
                "--no-housekeeping",
                "--late-horizon-days",
                "30",
            ],
            env=env,
            stdout=log,
            stderr=log,
        )
        self.starts[i] = self.starts.get(i, 0) + 1

    def wait_subscribed(self, i: int, timeout_s: float = 30.0) -> None:
        """Until ingest-i logged its subscription (on this start: the log is appended to)."""
        log = self.logdir / f"ingest-{i}.log"
        deadline = time.monotonic() + timeout_s
        while log.read_text().count(f"ingest-{i} subscribed to ") < self.starts[i]:
            assert time.monotonic() < deadline, f"ingest-{i} did not subscribe:\n{self.logs()}"
            assert self.procs[i].poll() is None, f"ingest-{i} exited:\n{self.logs()}"
            time.sleep(0.05)

    def signal(self, i: int, sig: signal.Signals) -> None:
        proc = self.procs.pop(i)
        proc.send_signal(sig)
        proc.wait(30)

    def close(self) -> None:
        for i in list(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.signal(i, signal.SIGTERM)
        for proc in self.procs.values():
            proc.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logdir.glob("*.log")))


@dataclass
class Device:
    agent: Agent
    clock: ManualClock
    sensor: DemoSensor
    put_seqs: list[int] = field(default_factory=list)
    samples: int = 0


class Fleet:
    """Real agents with their own clientid-bound credentials, recording sessions while the faults happen."""

    def __init__(self, tmp_path: Path, broker: ProductionBroker, commit_timeout_s: float) -> None:
        self.tmp_path = tmp_path
        self.broker = broker
        self.commit_timeout_s = commit_timeout_s
        self.devices: list[Device] = []
        self._running = True
        self._tasks: list[asyncio.Task[None]] = []
        self.link_stats: list[LinkStats] = []  # as the run ended

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Fleet]:
        start = datetime.now(UTC) - timedelta(hours=1)
        urls = self.broker.devices([f"fault-{i:02d}" for i in range(DEVICES)])
        try:
            for i, (device_id, url) in enumerate(urls.items()):
                cfg = fast_config(
                    self.tmp_path / device_id,
                    url,
                    device_id=device_id,
                    samples_per_batch=SAMPLES_PER_MESSAGE,
                    session_expiry_s=600,
                    commit_timeout_s=self.commit_timeout_s,
                    commit_timeout_max_s=3 * self.commit_timeout_s,
                )
                clock = ManualClock(start + timedelta(seconds=i))
                agent = Agent(cfg, clock=clock)
                await agent.__aenter__()
                device = Device(agent, clock, DemoSensor(seed=i))
                put = agent.outbox.put

                def recording_put(topic: str, build: Callable[[int], bytes], d: Device = device, p=put):  # type: ignore[no-untyped-def]
                    result = p(topic, build)
                    d.put_seqs.append(result.seq)
                    return result

                agent.outbox.put = recording_put  # type: ignore[method-assign]
                self.devices.append(device)
            async with asyncio.TaskGroup() as tg:
                self._tasks = [tg.create_task(self._traffic(d)) for d in self.devices]
                try:
                    yield self
                finally:
                    await self.stop_traffic()
        finally:
            for d in self.devices:
                await d.agent.__aexit__(None, None, None)

    async def stop_traffic(self) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)

    async def _traffic(self, d: Device) -> None:
        while self._running:
            d.agent.start_session(3)
            for _ in range(12):  # 12 messages of 5 samples: a one-minute session
                for _ in range(SAMPLES_PER_MESSAGE):
                    d.clock.advance(1.0)
                    d.agent.record(d.sensor.read(d.clock.now(), 3))
                    d.samples += 1
                await asyncio.sleep(MESSAGE_GAP_S)
                if not self._running:
                    break
            d.agent.end_session(EndReason.USER)
            d.clock.advance(30.0)

    async def committed(self, timeout_s: float = 90.0) -> None:
        """Every outbox empty: only the cloud's commit marks delete rows."""
        try:
            async with asyncio.timeout(timeout_s):
                for d in self.devices:
                    await d.agent.drained()
        except TimeoutError:
            for d in self.devices:
                ob = d.agent.outbox
                print(
                    d.agent.config.device_id,
                    "depth",
                    ob.depth,
                    "floor",
                    ob.floor(),
                    "next",
                    ob.next_seq,
                    d.agent.link.stats,
                )
            raise


def check_exactly_once(dsn: str, fleet: Fleet) -> None:
    with psycopg.connect(dsn) as conn:
        for d in fleet.devices:
            device_id = d.agent.config.device_id
            rows = conn.execute(
                "SELECT seq, count(*) FROM uplink_log WHERE device_id = %s AND kind <> 'status' GROUP BY seq",
                (device_id,),
            ).fetchall()
            stored = dict(rows)
            missing = sorted(set(d.put_seqs) - set(stored))
            assert missing == [], f"{device_id}: {len(missing)} seqs never stored, first {missing[:10]}"
            twice = {s: n for s, n in stored.items() if n != 1}
            assert twice == {}, f"{device_id}: stored more than once: {twice}"
            samples = conn.execute(
                "SELECT count(*) FROM samples WHERE device_id = %s", (device_id,)
            ).fetchone()
            assert samples == (d.samples,), f"{device_id}: {samples} sample rows, recorded {d.samples}"
        quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()
    assert quarantined == (0,)


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
) -> Fleet:
    for i in range(1, consumers + 1):
        p.ingest.start(i)
    for i in range(1, consumers + 1):
        p.ingest.wait_subscribed(i)  # before the first message: a publish to an empty group is not taken
    try:
        async with Fleet(p.tmp_path, p.broker, commit_timeout_s).running() as fleet:
            await asyncio.sleep(1.5)  # traffic flows before the fault
            await fault()
            await asyncio.sleep(1.5)  # and after it
            await fleet.stop_traffic()
            await fleet.committed(drain_timeout_s)
            await asyncio.to_thread(check_exactly_once, p.dsn, fleet)
            fleet.link_stats = [dataclasses.replace(d.agent.link.stats) for d in fleet.devices]
        return fleet
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
    fleet = await run_with_fault(p, 3, fault, commit_timeout_s=40.0, drain_timeout_s=30.0)
    assert [s.resent for s in fleet.link_stats] == [0] * DEVICES
    assert all(s.committed > 0 and s.not_taken == 0 for s in fleet.link_stats)
