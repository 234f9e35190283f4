"""A fleet of virtual devices in ONE asyncio process: each a real edge Agent with its own MQTT connection
(client id = device id, credentials from the URL template), driven by a simulated user on one SimClock.

    async with Fleet(FleetConfig(scenario, mqtt_url=url, data_dir=path)) as fleet:
        await fleet.connect(ramp_per_s=500)     # agents start at this rate
        await fleet.live()                      # the scenario's days of use, in virtual time
        await fleet.drained()                   # every outbox empty (wrap in a timeout)

Agents run with EdgeConfig's ack mode, "committed" unless `extra` says otherwise: a message leaves a
device's outbox when the cloud's CommitMark covers it, so `drained()` needs microfleet's cloud (ingest)
behind the broker. Against a bare broker pass `extra={"ack_mode": "broker"}` (delete on PUBACK).

Footprint (docs/performance.md): with `shared_outbox=True` (the default here) every agent's outbox lives
in ONE SQLite file (edge.outbox.OutboxFile): about 40 KiB and one socket per agent, no thread per agent.
A replica of a scaled-out simulator runs `device_range` (its slice, simulators.slicing).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from edge.app import Agent
from edge.config import EdgeConfig, SyncMode
from edge.outbox import OutboxFile
from simulators.device import SimCounters, run_user
from simulators.faults import drop_link_at, flap_schedule
from simulators.persona import Persona, assign_all
from simulators.scenario import Scenario
from simulators.simclock import SimClock


@dataclass(frozen=True, slots=True)
class FleetConfig:
    scenario: Scenario
    mqtt_url: (
        str  # may hold {device_id}: mqtt://{device_id}:pw-{device_id}@host:1883; comma-separated: gateways
    )
    data_dir: Path
    device_range: range | None = None  # this process's slice of 0..scenario.devices-1 (None: all)
    shared_outbox: bool = True
    outbox_sync: SyncMode = "off"
    session_expiry_s: int = 0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    keepalive_s: int = 60
    clock_skew_s: dict[int, float] = field(default_factory=dict)  # device index -> offset (fault)
    flaps: bool = True  # drop the links of personas with flaps_per_day (connectivity_challenged)
    extra: dict[str, object] = field(default_factory=dict)  # more EdgeConfig fields for every agent
    # the signing keys every agent trusts (protocols, firmware); None: the scenario's `trusted_keys`
    trusted_keys_file: Path | None = None
    # several comma-separated URLs: device i starts at URL i mod n (then the next after a lost connection)
    # instead of every device starting at the first: the load spread over the gateways of a cluster
    spread_brokers: bool = False

    @property
    def trusted_keys(self) -> Path | None:
        return self.trusted_keys_file if self.trusted_keys_file is not None else self.scenario.trusted_keys

    @property
    def indices(self) -> range:
        return self.device_range if self.device_range is not None else range(self.scenario.devices)

    def device_id(self, i: int) -> str:
        return f"{self.scenario.id_prefix}-{i:05d}"


@dataclass(frozen=True, slots=True)
class FleetStats:
    devices: int
    started: int
    connected: int
    sessions_started: int
    sessions_ended: int
    samples: int
    stored: int
    sent: int  # outbox rows the broker took (PUBACK 0x00; re-sends count again)
    committed: int  # outbox rows removed by the cloud's commit marks (0 with ack_mode "broker")
    not_taken: int  # PUBACK 0x10 or >= 0x80: kept and sent again
    outbox_depth: int
    outbox_dropped: int
    sim_time_s: float


def rotate_urls(urls: str, k: int) -> str:
    """Pure: the comma-separated URLs starting at the k-th (mod their count), the others after it in order."""
    parts = [u.strip() for u in urls.split(",") if u.strip()]
    if len(parts) < 2:
        return urls
    k %= len(parts)
    return ",".join(parts[k:] + parts[:k])


class Fleet:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        sc = config.scenario
        self.clock = SimClock(sc.start_at(), speed=sc.speed or None)
        self.counters = SimCounters()
        names = assign_all(sc.devices, sc.weights, sc.seed)
        self.personas: dict[str, Persona] = {
            config.device_id(i): sc.personas[names[i]] for i in config.indices
        }
        self.agents: list[Agent] = []
        self.first_seqs: dict[str, int] = {}  # per device, its first seq of this run (outboxes persist)
        self._stack = contextlib.AsyncExitStack()
        self._outbox_file: OutboxFile | None = None

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        if self.config.shared_outbox:
            self.config.data_dir.mkdir(parents=True, exist_ok=True)
            path = self.config.data_dir / f"outboxes-{self.config.scenario.id_prefix}.sqlite3"
            self._outbox_file = OutboxFile(path, sync=self.config.outbox_sync)
            self._stack.callback(self._outbox_file.close)  # runs after every agent has closed
        self.clock.run_in_background()
        self._stack.push_async_callback(self.clock.stop)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)

    def _edge_config(self, i: int) -> EdgeConfig:
        c, did = self.config, self.config.device_id(i)
        values: dict[str, object] = {
            "device_id": did,
            "data_dir": c.data_dir / did,
            "mqtt_url": rotate_urls(c.mqtt_url, i if c.spread_brokers else 0).replace("{device_id}", did),
            "outbox_sync": c.outbox_sync,
            "samples_per_batch": c.scenario.samples_per_batch,
            "model": self.personas[did].model,
            "session_expiry_s": c.session_expiry_s,
            "reconnect_min_s": c.reconnect_min_s,
            "reconnect_max_s": c.reconnect_max_s,
            "keepalive_s": c.keepalive_s,
            "outbox_file": self._outbox_file.path if self._outbox_file else None,
            "trusted_keys_file": c.trusted_keys,
            **c.extra,
        }
        return EdgeConfig(**values)  # type: ignore[arg-type]

    async def connect(self, ramp_per_s: float = 0.0, *, wait_s: float | None = 60.0) -> None:
        """Start every agent (at `ramp_per_s` per second; 0 = all at once); wait until all are connected."""
        c = self.config
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for n, i in enumerate(c.indices):
            if ramp_per_s > 0:
                ahead = t0 + n / ramp_per_s - loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            agent = Agent(
                self._edge_config(i),
                clock=self.clock.agent_view(c.clock_skew_s.get(i, 0.0)),
                rng=random.Random(c.scenario.seed * 1_000_003 + i),
            )
            self.agents.append(await self._stack.enter_async_context(agent))
            self.first_seqs[agent.config.device_id] = agent.outbox.next_seq
        if wait_s is not None:
            async with asyncio.timeout(wait_s):
                for agent in self.agents:
                    await agent.link.connected.wait()

    async def live(
        self, days: float | None = None, *, tick_s: int | None = None, continuous: bool = False
    ) -> FleetStats:
        """Every user lives the scenario's days (virtual time); open sessions end on cancellation."""
        sc = self.config.scenario
        tick = tick_s if tick_s is not None else (1 if sc.speed else 60)
        async with asyncio.TaskGroup() as tg:
            for i, agent in zip(self.config.indices, self.agents, strict=True):
                did = agent.config.device_id
                tg.create_task(
                    run_user(
                        agent,
                        self.personas[did],
                        self.clock,
                        random.Random(f"{sc.seed}:user:{i}"),
                        self.counters,
                        days=sc.days if days is None else days,
                        tick_s=tick,
                        continuous=continuous,
                    ),
                    name=f"user:{did}",
                )
                per_day = self.personas[did].flaps_per_day
                if per_day > 0 and self.config.flaps:
                    rng = random.Random(f"{sc.seed}:flaps:{i}")
                    t0 = self.clock.monotonic()
                    times = [t0 + t for t in flap_schedule(rng, sc.days if days is None else days, per_day)]
                    tg.create_task(drop_link_at(agent, self.clock, times, self.counters), name=f"flaps:{did}")
        return self.stats()

    async def drained(self) -> None:
        """Wait until every agent's outbox is empty (wrap in a timeout)."""
        for agent in self.agents:
            await agent.drained()

    def stats(self) -> FleetStats:
        per = [a.stats() for a in self.agents]
        return FleetStats(
            devices=len(self.config.indices),
            started=len(self.agents),
            connected=sum(s.connected for s in per),
            sessions_started=self.counters.sessions_started,
            sessions_ended=self.counters.sessions_ended,
            samples=self.counters.samples,
            stored=sum(s.stored for s in per),
            sent=sum(s.sent for s in per),
            committed=sum(s.committed for s in per),
            not_taken=sum(s.not_taken for s in per),
            outbox_depth=sum(s.outbox_depth for s in per),
            outbox_dropped=sum(s.outbox_dropped for s in per),
            sim_time_s=self.clock.monotonic(),
        )

    def next_seqs(self) -> dict[str, int]:
        """Per device, the next sequence number: every seq below it was given to a message."""
        return {a.config.device_id: a.outbox.next_seq for a in self.agents}
