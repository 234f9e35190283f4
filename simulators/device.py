"""One virtual device: the real edge Agent driven by a persona's user and a simulated sensor."""

from __future__ import annotations

import random
from dataclasses import dataclass

from contract.messages import EndReason
from edge.app import Agent
from edge.clock import Clock
from simulators.persona import Persona, SessionPlan, next_gap_s, plan_session
from simulators.sensor import SimulatedSensor


@dataclass(slots=True)
class SimCounters:
    """Live counters shared by every device of a fleet (one event loop: no locks needed)."""

    sessions_started: int = 0
    sessions_ended: int = 0


async def run_device(
    agent: Agent,
    persona: Persona,
    clock: Clock,
    rng: random.Random,
    counters: SimCounters,
    *,
    first_session_within_s: float,
) -> None:
    """Treat sessions forever; on cancellation an open session ends (the user puts the device down)."""
    sensor = SimulatedSensor(persona, rng)
    try:
        await clock.sleep(rng.uniform(0, first_session_within_s))
        while True:
            plan = plan_session(persona, rng)
            await _one_session(agent, sensor, plan, clock, counters)
            await clock.sleep(next_gap_s(persona, plan, rng))
    finally:
        if agent.session_id is not None:
            agent.end_session(EndReason.USER)
            counters.sessions_ended += 1


async def _one_session(
    agent: Agent, sensor: SimulatedSensor, plan: SessionPlan, clock: Clock, counters: SimCounters
) -> None:
    sensor.begin_session()
    agent.start_session(plan.level_start)
    counters.sessions_started += 1
    changes = list(plan.changes)
    t0 = clock.monotonic()
    for second in range(1, plan.duration_s + 1):
        await clock.sleep(t0 + second - clock.monotonic())  # ticks stay on the 1 Hz grid, no drift
        while changes and changes[0][0] < second:
            agent.change_level(changes.pop(0)[1])
        agent.record(sensor.read(clock.now(), agent.level or plan.level_start))
    agent.end_session(plan.end_reason)
    counters.sessions_ended += 1
