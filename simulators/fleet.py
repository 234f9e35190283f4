"""A fleet of virtual devices in ONE asyncio process: each a real edge Agent with its own MQTT
connection (client id = device id), its own outbox under `data_dir/<device_id>/`, all on one shared
ScaledClock (`speed` simulated seconds per real second).

    async with Fleet(FleetConfig(devices=200, mqtt_url=url, data_dir=path, speed=60)) as fleet:
        await fleet.run(60)            # real seconds; then open sessions end and outboxes drain
        print(fleet.stats())

Footprint: no threads per agent; per agent one socket, one SQLite connection (page cache capped at
256 KiB), a session accumulator (8 bytes per sample while a session runs) and a few tasks.
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
from edge.clock import ScaledClock
from edge.config import EdgeConfig, SyncMode
from simulators.device import SimCounters, run_device
from simulators.persona import PERSONAS, assign


@dataclass(frozen=True, slots=True)
class FleetConfig:
    mqtt_url: str
    data_dir: Path
    devices: int = 10
    speed: float = 60.0
    seed: int = 0
    id_prefix: str = "sim"
    personas: tuple[str, ...] = tuple(PERSONAS)
    first_session_within_s: float = 600.0  # simulated; so that a short run sees sessions
    outbox_sync: SyncMode = "normal"
    session_expiry_s: int = 0
    reconnect_max_s: float = 60.0
    drain_timeout_s: float = 30.0
    extra: dict[str, object] = field(default_factory=dict)  # more EdgeConfig fields for every agent

    def __post_init__(self) -> None:
        unknown = [p for p in self.personas if p not in PERSONAS]
        if unknown:
            raise ValueError(f"unknown persona(s) {unknown}: choose from {sorted(PERSONAS)}")
        if self.devices <= 0:
            raise ValueError("devices must be > 0")


@dataclass(frozen=True, slots=True)
class FleetStats:
    devices: int
    connected: int
    sessions_started: int
    sessions_ended: int
    stored: int
    published: int
    outbox_depth: int
    outbox_dropped: int
    sim_elapsed_s: float


class Fleet:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.clock = ScaledClock(config.speed)
        self.counters = SimCounters()
        self.agents: list[Agent] = []
        self._stack = contextlib.AsyncExitStack()

    def device_id(self, i: int) -> str:
        return f"{self.config.id_prefix}-{i:05d}"

    async def __aenter__(self) -> Self:
        c = self.config
        await self._stack.__aenter__()
        try:
            for i in range(c.devices):
                did = self.device_id(i)
                values: dict[str, object] = {
                    "device_id": did,
                    "data_dir": c.data_dir / did,
                    "mqtt_url": c.mqtt_url,
                    "outbox_sync": c.outbox_sync,
                    "session_expiry_s": c.session_expiry_s,
                    "reconnect_max_s": c.reconnect_max_s,
                    **c.extra,
                }
                cfg = EdgeConfig(**values)  # type: ignore[arg-type]
                agent = Agent(cfg, clock=self.clock, rng=random.Random(c.seed * 1_000_003 + i))
                self.agents.append(await self._stack.enter_async_context(agent))
        except BaseException:
            await self._stack.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)

    async def run(self, duration_s: float, *, drain: bool = True) -> FleetStats:
        """Run every device for `duration_s` real seconds, end open sessions, then wait (bounded) until
        every outbox is empty. Returns the final stats."""
        c = self.config
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(
                    run_device(
                        agent,
                        assign(i, c.personas),
                        self.clock,
                        random.Random(c.seed * 7_919 + i),
                        self.counters,
                        first_session_within_s=c.first_session_within_s,
                    ),
                    name=f"device:{agent.config.device_id}",
                )
                for i, agent in enumerate(self.agents)
            ]
            await asyncio.sleep(duration_s)
            for t in tasks:
                t.cancel()
        if drain:
            async with asyncio.timeout(c.drain_timeout_s):
                await self.drained()
        return self.stats()

    async def drained(self) -> None:
        """Wait until every agent's outbox is empty (wrap in a timeout)."""
        for agent in self.agents:
            await agent.drained()

    def stats(self) -> FleetStats:
        per = [a.stats() for a in self.agents]
        return FleetStats(
            devices=len(self.agents),
            connected=sum(s.connected for s in per),
            sessions_started=self.counters.sessions_started,
            sessions_ended=self.counters.sessions_ended,
            stored=sum(s.stored for s in per),
            published=sum(s.published for s in per),
            outbox_depth=sum(s.outbox_depth for s in per),
            outbox_dropped=sum(s.outbox_dropped for s in per),
            sim_elapsed_s=self.clock.monotonic(),
        )
