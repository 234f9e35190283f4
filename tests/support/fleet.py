"""Real edge agents and real ingest processes for the end-to-end delivery tests, on any broker: the
production mosquitto (tests/e2e/test_delivery_faults.py) or the NATS tier's MQTT gateways
(tests/nats/test_ingest_tier.py, test_alerts_tier.py). Nothing here is a mock:

    ingest = Ingest(dsn, mqtt_url, tmp_path); ingest.start(1); ingest.wait_subscribed(1)
    async with AgentFleet(configs, samples_per_message=5, message_gap_s=0.05).running() as fleet:
        ...                                   # a fault while every agent records sessions
        await fleet.stop_traffic()
        await fleet.committed(90.0)           # every outbox emptied by the cloud's commit marks
        check_exactly_once(dsn, fleet)        # every seq put in an outbox stored exactly once
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from contract.messages import EndReason
from edge.app import Agent
from edge.clock import ManualClock
from edge.config import EdgeConfig
from edge.sensor import DemoSensor
from tests.support.services import ROOT

__all__ = ["AgentFleet", "Device", "Ingest", "check_exactly_once"]

MESSAGES_PER_SESSION = 12  # of samples_per_message samples, one a second: a one-minute session


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
    put_seqs: list[int] = field(default_factory=list)  # every seq the agent put in its outbox
    samples: int = 0


class AgentFleet:
    """One real agent per config (agent i's clock and sensor seeded by i), recording one-minute sessions
    back to back while `running()`; every seq each outbox hands out is noted in its Device."""

    def __init__(
        self, configs: Sequence[EdgeConfig], *, samples_per_message: int, message_gap_s: float
    ) -> None:
        self.configs = list(configs)
        self.samples_per_message = samples_per_message
        self.message_gap_s = message_gap_s
        self.devices: list[Device] = []
        self._running = True
        self._tasks: list[asyncio.Task[None]] = []

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AgentFleet]:
        start = datetime.now(UTC) - timedelta(hours=1)
        try:
            for i, cfg in enumerate(self.configs):
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
            for _ in range(MESSAGES_PER_SESSION):
                for _ in range(self.samples_per_message):
                    d.clock.advance(1.0)
                    d.agent.record(d.sensor.read(d.clock.now(), 3))
                    d.samples += 1
                await asyncio.sleep(self.message_gap_s)
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


def check_exactly_once(dsn: str, fleet: AgentFleet) -> None:
    """Every seq each agent put in its outbox is in uplink_log exactly once, every sample recorded is a
    row of samples, and nothing was quarantined."""
    with psycopg.connect(dsn) as conn:
        for d in fleet.devices:
            device_id = d.agent.config.device_id
            rows = conn.execute(
                "SELECT seq, count(*) FROM uplink_log WHERE device_id = %s AND kind <> 'status' GROUP BY seq",
                (device_id,),
            ).fetchall()
            stored: dict[int, int] = dict(rows)
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
