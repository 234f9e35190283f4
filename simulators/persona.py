"""Personas (shared/DOMAIN.md section 7) as parameter sets, and the pure planning of a day of use.

A persona says on which days its user treats, how many sessions, how long, at which level, how good the
gel is and how the user reacts (drops the level, aborts, restarts after the auto-off, creeps up). The
functions here are pure: `plan_day(persona, day, weekday, rng)` -> the day's sessions, each a SessionPlan
with its start (seconds after local midnight). `expected` lists the alert rule ids the persona must raise
(cloud/alerts/README.md); the compliant starter must raise none.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from contract.messages import EndReason, Zone

AUTO_OFF_S = 20 * 60  # NuFACE Mini+ auto-off (K201680)
FACE = (Zone.JAW_L, Zone.CHEEK_L, Zone.FOREHEAD, Zone.CHEEK_R, Zone.JAW_R, Zone.NECK)
WEEKDAYS = (0, 1, 2, 3, 4)
EVERY_DAY = (0, 1, 2, 3, 4, 5, 6)


@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    weekdays: tuple[int, ...] = WEEKDAYS  # days of the week with use (0 = Monday)
    every_n_days: int = 1  # 2: every other day
    sessions_per_day: tuple[int, int] = (1, 1)
    session_s: tuple[float, float] = (280, 320)
    levels: tuple[int, int] = (2, 3)  # the comfortable setpoints, inclusive
    impedance_ohm: tuple[float, float] = (3_000, 10_000)
    level_start: int | None = None  # None: a comfortable level
    level_start_days: int = 10_000  # level_start applies on the first N days only
    drop_within_s: float = 30.0  # after a start above the comfortable level, drops this soon
    early_abort: float = 0.0  # probability of ending after about a minute (first 14 days)
    restart_after_auto_off: float = 0.0  # probability of starting again within minutes
    ups_after_s: tuple[float, ...] = ()  # level-ups at these seconds into a session
    creep_levels: int = 0  # the start level rises by this much ...
    creep_days: float = 21.0  # ... over this many days
    tries_up_then_down: float = 0.0  # probability per session of +1 then -1 within 10 s
    spike_per_s: float = 0.0  # good gel: no impedance spikes (a spike is the dry-skin zap, DOMAIN T5)
    contact_loss_per_s: float = 0.002
    zones: tuple[Zone, ...] = FACE
    ua_scale: float = 1.0  # more (or less) current per level than the model's scale
    model: str = "mf-home-1"
    auto_off_s: int | None = AUTO_OFF_S
    active_days: int | None = None  # lapsed user: stops after N days
    maintenance_after_days: int | None = None  # then only `maintenance_weekdays`
    maintenance_weekdays: tuple[int, ...] = (1, 3, 5)
    first_start_h: tuple[float, float] = (7.0, 9.0)  # local hour of the first session
    flaps_per_day: float = 0.0  # connectivity: link drops per day (applied by the fleet)
    expected: frozenset[str] = field(default_factory=frozenset)


def _p(name: str, expected: tuple[str, ...] = (), **kw: object) -> Persona:
    return Persona(name, expected=frozenset(expected), **kw)  # type: ignore[arg-type]


PERSONAS: dict[str, Persona] = {
    p.name: p
    for p in (
        _p("compliant_starter", maintenance_after_days=60),
        _p(
            "default_max_newbie",
            ("T4",),
            session_s=(240, 330),
            levels=(2, 2),
            level_start=5,
            level_start_days=14,
            early_abort=1 / 3,
        ),
        _p(
            "over_user",
            ("O2", "O3", "O4", "O5"),
            weekdays=EVERY_DAY,
            sessions_per_day=(2, 2),
            session_s=(900, 1500),
            levels=(3, 4),
            restart_after_auto_off=0.6,
        ),
        _p(
            "sensation_chaser",
            ("T1", "T2", "T3"),
            session_s=(480, 600),
            levels=(2, 2),
            ups_after_s=(200, 240),
            creep_levels=2,
            creep_days=21,
        ),
        _p(
            "gel_skimper",
            ("T5",),
            session_s=(240, 360),
            levels=(3, 4),
            impedance_ohm=(40_000, 150_000),
            spike_per_s=0.02,
            contact_loss_per_s=0.05,
        ),
        _p(
            "sensitive_skin",
            ("T4",),
            weekdays=EVERY_DAY,
            every_n_days=2,
            levels=(1, 2),
            tries_up_then_down=0.8,
        ),
        _p("lapsed_user", ("O5",), weekdays=EVERY_DAY, active_days=21),
        _p("zone_misuser", ("O7",), zones=(*FACE[:3], Zone.ORBITAL, Zone.TEMPLE, *FACE[3:])),
        # a compliant clinic: the pro model's 12-level scale (10-600 µA on a 0.1 cm² probe), kept within
        # the pro protocol's face limits: levels 2-3 are 64-117 µA, under T6's warning (1 mA/cm² rms =
        # 141 µA peak at a 0.5 duty cycle) and T8's 200 µA face cap. It raises nothing, as a compliant
        # home user does (before, levels 4-5 of the home scale x 1.5 = 480-600 µA: T6 critical on every
        # session).
        _p(
            "clinic_esthetician",
            weekdays=(0, 1, 2, 3, 4, 5),
            sessions_per_day=(6, 10),
            session_s=(1800, 3300),
            levels=(2, 3),
            model="mf-pro-1",
            auto_off_s=None,
            first_start_h=(9.0, 9.5),
        ),
        _p("connectivity_challenged", flaps_per_day=3.0),
    )
}


@dataclass(frozen=True, slots=True)
class SessionPlan:
    start_s: float  # seconds after local midnight
    duration_s: int
    level_start: int
    changes: tuple[tuple[int, int], ...]  # (second into the session, new level), ascending
    end_reason: EndReason
    restart: bool = False  # a restart straight after an auto-off


def uses_on(p: Persona, day: int, weekday: int) -> bool:
    if p.active_days is not None and day >= p.active_days:
        return False
    days = p.weekdays
    if p.maintenance_after_days is not None and day >= p.maintenance_after_days:
        days = p.maintenance_weekdays
    return weekday in days and day % p.every_n_days == 0


def plan_session(
    p: Persona, rng: random.Random, day: int, start_s: float, restart: bool = False
) -> SessionPlan:
    creep = round(p.creep_levels * min(1.0, day / p.creep_days)) if p.creep_levels else 0
    comfortable = min(5, rng.randint(*p.levels) + creep)
    start = p.level_start if p.level_start is not None and day < p.level_start_days else comfortable
    duration = int(rng.uniform(*p.session_s))
    changes: list[tuple[int, int]] = []
    level = start
    if start > comfortable:
        changes.append((int(rng.uniform(3, p.drop_within_s)), comfortable))
        level = comfortable
    for at in p.ups_after_s:
        if level < 5:
            level += 1
            changes.append((int(at + rng.uniform(0, 20)), level))
    if p.tries_up_then_down and rng.random() < p.tries_up_then_down and level < 5:
        at = int(rng.uniform(60, 120))
        changes += [(at, level + 1), (at + int(rng.uniform(3, 9)), level)]
    reason = EndReason.USER
    if day < 14 and rng.random() < p.early_abort:
        duration = min(duration, int(rng.uniform(40, 55)))
    elif p.auto_off_s is not None and duration >= p.auto_off_s:
        duration, reason = p.auto_off_s, EndReason.AUTO_TIMER
    kept = tuple(sorted(c for c in changes if c[0] < duration))
    return SessionPlan(start_s, duration, start, kept, reason, restart)


def plan_day(p: Persona, day: int, weekday: int, rng: random.Random) -> list[SessionPlan]:
    """The sessions of one local day, in order; `start_s` is seconds after local midnight. A session that
    would not end before 23:55 is left out (sessions never cross midnight)."""
    if not uses_on(p, day, weekday):
        return []
    n = rng.randint(*p.sessions_per_day)
    t = rng.uniform(*p.first_start_h) * 3600
    plans: list[SessionPlan] = []
    for i in range(n):
        plan = plan_session(p, rng, day, t)
        plans.append(plan)
        end = t + plan.duration_s
        if plan.end_reason is EndReason.AUTO_TIMER and rng.random() < p.restart_after_auto_off:
            again = plan_session(p, rng, day, end + rng.uniform(30, 300), restart=True)
            plans.append(again)
            end = again.start_s + again.duration_s
        if n == 2 and i == 0:
            t = max(end + 600, rng.uniform(19, 20.5) * 3600)  # morning and evening
        else:
            t = end + rng.uniform(600, 1800)
    return [x for x in plans if x.start_s + x.duration_s < 86_100]


def assign_all(n: int, weights: dict[str, float], seed: int) -> list[str]:
    """Persona names for devices 0..n-1: counts by weight (largest remainder, so 200 devices at equal
    weights give exactly 20 of each), in a seeded shuffle. Deterministic for (n, weights, seed)."""
    names = sorted(w for w in weights if weights[w] > 0)
    total = sum(weights[w] for w in names)
    exact = {w: n * weights[w] / total for w in names}
    counts = {w: int(exact[w]) for w in names}
    for w in sorted(names, key=lambda w: (counts[w] - exact[w], w))[: n - sum(counts.values())]:
        counts[w] += 1
    out = [w for w in names for _ in range(counts[w])]
    random.Random(seed).shuffle(out)
    return out
