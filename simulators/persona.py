"""Personas (shared/DOMAIN.md §7) as parameter sets, and the pure planning of one session from them.

A persona says how often its user treats, for how long, at which level, how good the gel is and how
the user reacts (drops the level, aborts, restarts after the auto-off). `plan_session` turns a persona
and a seeded random source into one concrete SessionPlan; `next_gap_s` says when the next one starts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from contract.messages import EndReason, Zone

AUTO_OFF_S = 20 * 60  # NuFACE Mini+ auto-off (K201680)
FACE = (Zone.JAW_L, Zone.CHEEK_L, Zone.FOREHEAD, Zone.CHEEK_R, Zone.JAW_R, Zone.NECK)


@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    sessions_per_day: float
    session_s: tuple[float, float]
    levels: tuple[int, int]  # the comfortable setpoints, inclusive
    impedance_ohm: tuple[float, float]  # per-session base impedance on contact
    level_start: int | None = None  # None: a comfortable level
    drop_within_s: float | None = None  # newbie: drops to a comfortable level this soon
    early_abort: float = 0.0  # probability of ending after about a minute
    restart_after_auto_off: float = 0.0  # probability of starting again within minutes
    spike_per_s: float = 0.001
    contact_loss_per_s: float = 0.005
    zones: tuple[Zone, ...] = FACE


PERSONAS: dict[str, Persona] = {
    p.name: p
    for p in (
        Persona("compliant_starter", 5 / 7, (280, 320), (2, 3), (3_000, 10_000)),
        Persona(
            "default_max_newbie",
            1.0,
            (240, 330),
            (2, 2),
            (3_000, 10_000),
            level_start=5,
            drop_within_s=30,
            early_abort=1 / 3,
        ),
        Persona(
            "over_user",
            2.0,
            (900, 1500),
            (3, 4),
            (3_000, 10_000),
            restart_after_auto_off=0.5,
        ),
        Persona(
            "gel_skimper",
            1.0,
            (240, 360),
            (3, 4),
            (40_000, 150_000),
            spike_per_s=0.02,
            contact_loss_per_s=0.05,
        ),
    )
}


@dataclass(frozen=True, slots=True)
class SessionPlan:
    duration_s: int
    level_start: int
    changes: tuple[tuple[int, int], ...]  # (second into the session, new level)
    end_reason: EndReason


def plan_session(p: Persona, rng: random.Random) -> SessionPlan:
    comfortable = rng.randint(*p.levels)
    start = p.level_start if p.level_start is not None else comfortable
    duration = int(rng.uniform(*p.session_s))
    changes: list[tuple[int, int]] = []
    if p.drop_within_s is not None and start != comfortable:
        changes.append((int(rng.uniform(3, p.drop_within_s)), comfortable))
    reason = EndReason.USER
    if rng.random() < p.early_abort:
        duration = min(duration, int(rng.uniform(40, 75)))
    elif duration >= AUTO_OFF_S:
        duration, reason = AUTO_OFF_S, EndReason.AUTO_TIMER
    return SessionPlan(duration, start, tuple(c for c in changes if c[0] < duration), reason)


def next_gap_s(p: Persona, plan: SessionPlan, rng: random.Random) -> float:
    """Seconds from the end of one session to the start of the next."""
    if plan.end_reason is EndReason.AUTO_TIMER and rng.random() < p.restart_after_auto_off:
        return rng.uniform(30, 300)
    return rng.expovariate(p.sessions_per_day / 86_400)


def assign(index: int, names: tuple[str, ...]) -> Persona:
    """Round-robin persona for device `index` (deterministic, so a fleet is reproducible)."""
    return PERSONAS[names[index % len(names)]]
