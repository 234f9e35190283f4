"""One simulated user driving one real edge Agent through the days of a scenario.

The user sleeps on the fleet's SimClock (virtual time) until each planned session, then records it: the
1 Hz readings are generated with their exact timestamps (`start + n` seconds) and handed to the real agent
in chunks of `tick_s` simulated seconds (1 in real time, 60 when compressed: the data is the same, the
number of clock wake-ups is 60 times smaller). Level changes happen exactly at their second.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from contract.messages import EndReason
from edge.app import Agent
from edge.notices import SessionRefused
from simulators.persona import Persona, SessionPlan, plan_day, plan_session
from simulators.sensor import SimulatedSensor
from simulators.simclock import SimClock

DAY_S = 86_400


@dataclass(slots=True)
class SimCounters:
    """Live counters shared by every device of a fleet (one event loop: no locks needed)."""

    sessions_started: int = 0
    sessions_ended: int = 0
    sessions_refused: int = 0  # the agent said no: a daily limit of its protocol, or the safety gate
    samples: int = 0
    link_drops: int = 0  # connections dropped on purpose (a connectivity-challenged persona's flaps)


async def run_user(
    agent: Agent,
    persona: Persona,
    clock: SimClock,
    rng: random.Random,
    counters: SimCounters,
    *,
    days: float,
    tick_s: int = 60,
    continuous: bool = False,
) -> None:
    """Live `days` simulated days from the clock's day 0. On cancellation an open session ends.
    `continuous` (load tests): sessions back to back, 5-30 s apart, whatever the day plan says."""
    clock.enter()
    try:
        sensor = SimulatedSensor(persona, rng)
        if continuous:
            await clock.sleep(rng.uniform(0, 2))
            while True:
                await _session(agent, sensor, plan_session(persona, rng, 0, 0.0), clock, counters, tick_s)
                await clock.sleep(rng.uniform(5, 30))
        end = days * DAY_S
        day = 0
        while day * DAY_S < end:
            weekday = (clock.start + timedelta(days=day)).weekday()
            for plan in plan_day(persona, day, weekday, rng):
                at = day * DAY_S + plan.start_s
                if at + plan.duration_s > end:
                    break
                await clock.sleep(at - clock.monotonic())
                await _session(agent, sensor, plan, clock, counters, tick_s)
            day += 1
        await clock.sleep(end - clock.monotonic())
    finally:
        if agent.session_id is not None:
            agent.end_session(EndReason.USER)
            counters.sessions_ended += 1
        clock.exit()


async def _session(
    agent: Agent, sensor: SimulatedSensor, plan: SessionPlan, clock: SimClock, c: SimCounters, tick_s: int
) -> None:
    sensor.begin_session()
    t0 = clock.monotonic()
    start = agent.clock.now()  # the agent's own clock: skewed for the clock-skew fault
    try:
        agent.start_session(plan.level_start)
    except SessionRefused:  # the device enforces its protocol: the user is told no, and tries another day
        c.sessions_refused += 1
        return
    c.sessions_started += 1
    marks = {cp for cp, _ in plan.changes} | set(range(tick_s, plan.duration_s, tick_s)) | {plan.duration_s}
    changes = list(plan.changes)
    done = 0
    for mark in sorted(marks):
        await clock.sleep(t0 + mark - clock.monotonic())
        level = agent.level or plan.level_start
        for s in range(done + 1, mark + 1):
            if agent.session_id is None:  # the agent itself ended it (a protocol safety limit)
                c.sessions_ended += 1
                return
            agent.record(sensor.read(start + timedelta(seconds=s), level))
            c.samples += 1
        done = mark
        while changes and changes[0][0] <= mark and agent.session_id is not None:
            agent.change_level(changes.pop(0)[1])
    if agent.session_id is not None:
        agent.end_session(plan.end_reason)
    c.sessions_ended += 1
