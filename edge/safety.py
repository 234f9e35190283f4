"""Protocol caps during a session, and the daily limits before one: pure decisions, no I/O, no clock.

The agent (edge/protocols.py) feeds it the active protocol (or none), the user's local-day usage and,
once a second, the zone, level and elapsed time; it gets back the output limit to apply, whether the
session must end, and the interventions to record as events:

    env = envelope(protocol, MODEL_LIMITS[model])       # effective caps (never above the model's)
    refusal = refuse_start(env, usage_on(usage, now, tz))
    guard = SessionGuard(env)
    decision = guard.step(zone, level, elapsed_s, day_active_s)
    output.limit_current(decision.output_ua)

Rules:
- every zone gets a cap: the protocol's, never above the model's (rated maximum, eye-area cap); a zone
  the protocol does not list, or the model restricts, is capped at 0 (no output) and is an intervention;
- the output is the level's current clamped to the zone cap (an intervention when the clamp bites);
- the session ends (EndReason.SAFETY_LIMIT) when it reaches `session_max_s` or the day's active seconds
  reach `daily_active_max_s`;
- a session may not start beyond `sessions_per_day_max` or `daily_active_max_s` for the user's local day.
Without an active protocol the model's current envelope applies (caps as above); the session length is
then left to the device's own auto-off timer (firmware) and there are no daily limits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import NamedTuple, Protocol

from contract.messages import Zone
from contract.protocol import EYE_ZONES, ModelLimits, TreatmentProtocol
from edge.sensor import level_setpoint_ua


class OutputStage(Protocol):
    """The output-limit port: the hardware (or a simulated sensor) never drives more than this."""

    def limit_current(self, ua: float) -> None: ...


class HeldLimit:
    """An OutputStage that remembers the limit, for a sensor model (or a test) to honour."""

    def __init__(self) -> None:
        self.limit_ua: float | None = None

    def limit_current(self, ua: float) -> None:
        self.limit_ua = ua


# -- the user's local day ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayUsage:
    day: date  # the user's local calendar day
    sessions: int = 0
    active_s: float = 0.0


def local_day(now: datetime, tz_offset_min: int) -> date:
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    return (now + timedelta(minutes=tz_offset_min) - (now.utcoffset() or timedelta())).date()


def usage_on(usage: DayUsage | None, now: datetime, tz_offset_min: int) -> DayUsage:
    """Today's usage: the stored one if it is for today's local day, else a fresh day."""
    today = local_day(now, tz_offset_min)
    return usage if usage is not None and usage.day == today else DayUsage(today)


def after_start(usage: DayUsage | None, now: datetime, tz_offset_min: int) -> DayUsage:
    u = usage_on(usage, now, tz_offset_min)
    return DayUsage(u.day, u.sessions + 1, u.active_s)


def accrue(usage: DayUsage | None, now: datetime, tz_offset_min: int, seconds: float) -> DayUsage:
    u = usage_on(usage, now, tz_offset_min)
    return DayUsage(u.day, u.sessions, u.active_s + max(0.0, seconds))


# -- the effective envelope ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    zone_caps: dict[Zone, float]  # every Zone; 0 = no output there
    level_ua: Callable[[int], float]
    session_max_s: float
    sessions_per_day_max: int | None = None
    daily_active_max_s: float | None = None
    source: str = "model"  # "model" or "<protocol_id> v<version>"

    def cap(self, zone: Zone | None) -> float:
        """The cap for a zone; an unknown position gets the lowest cap that allows any output."""
        if zone is not None:
            return self.zone_caps.get(zone, 0.0)
        allowed = [c for c in self.zone_caps.values() if c > 0]
        return min(allowed) if allowed else 0.0


def _model_cap(zone: Zone, limits: ModelLimits) -> float:
    if zone in limits.restricted_zones:
        return 0.0
    if zone in EYE_ZONES:
        return min(limits.eye_max_current_ua, limits.rated_max_current_ua)
    return limits.rated_max_current_ua


def envelope(protocol: TreatmentProtocol | None, limits: ModelLimits) -> Envelope:
    if protocol is None:
        return Envelope(
            {z: _model_cap(z, limits) for z in Zone},
            lambda level: min(level_setpoint_ua(level), limits.rated_max_current_ua),
            math.inf,  # the device's own auto-off timer
        )
    caps = {z: 0.0 for z in Zone}
    for zl in protocol.zones:
        caps[zl.zone] = min(float(zl.max_current_ua), _model_cap(zl.zone, limits))
    return Envelope(
        caps,
        lambda level: min(protocol.current_for_level(level), limits.rated_max_current_ua),
        min(protocol.session_max_s, limits.auto_off_s),
        protocol.sessions_per_day_max,
        protocol.daily_active_max_s,
        f"{protocol.protocol_id} v{protocol.version}",
    )


# -- before a session ----------------------------------------------------------------------------------


class Refusal(NamedTuple):
    detail: str  # machine-readable: which limit
    limit: float
    message: str  # for the user


def refuse_start(env: Envelope, today: DayUsage) -> Refusal | None:
    """Why a session may not start today (None: it may)."""
    if env.sessions_per_day_max is not None and today.sessions >= env.sessions_per_day_max:
        return Refusal(
            "sessions_per_day_max",
            env.sessions_per_day_max,
            f"you have had {today.sessions} session(s) today, the most your protocol allows: "
            "your skin recovers between sessions, come back tomorrow",
        )
    if env.daily_active_max_s is not None and today.active_s >= env.daily_active_max_s:
        return Refusal(
            "daily_active_max_s",
            env.daily_active_max_s,
            f"today's treatment time ({today.active_s:.0f} s) reached your protocol's daily maximum: "
            "come back tomorrow",
        )
    return None


# -- during a session ----------------------------------------------------------------------------------


class Intervention(NamedTuple):
    detail: str  # what: "zone_cap:cheek_l", "restricted_zone:orbital", "session_max_s", ...
    value: float  # the limit applied


@dataclass(frozen=True, slots=True)
class Decision:
    output_ua: float  # the most the output stage may drive until the next step
    cap_ua: float  # the zone cap in force
    end: bool = False
    interventions: tuple[Intervention, ...] = ()


@dataclass(slots=True)
class SessionGuard:
    """One session's enforcement. Reports a clamp once per entry into it (not once a second)."""

    env: Envelope
    _last: str | None = field(default=None)
    _ended: bool = field(default=False)

    def step(self, zone: Zone | None, level: int, elapsed_s: float, day_active_s: float) -> Decision:
        env = self.env
        cap = env.cap(zone)
        requested = env.level_ua(level)
        found: list[Intervention] = []
        key: str | None = None
        if cap <= 0:
            key = f"restricted_zone:{zone.value if zone else 'unknown'}"
            found.append(Intervention(key, 0.0))
        elif requested > cap:
            key = f"zone_cap:{zone.value if zone else 'unknown'}"
            found.append(Intervention(key, cap))
        if key == self._last:
            found.clear()  # still in the same clamp: already recorded
        self._last = key
        output = max(0.0, min(requested, cap))
        end = False
        if elapsed_s >= env.session_max_s:
            end = True
            found.append(Intervention("session_max_s", env.session_max_s))
        elif env.daily_active_max_s is not None and day_active_s >= env.daily_active_max_s:
            end = True
            found.append(Intervention("daily_active_max_s", env.daily_active_max_s))
        if end or self._ended:
            if self._ended:
                found = []
            self._ended = True
            return Decision(0.0, cap, True, tuple(found))
        return Decision(output, cap, False, tuple(found))
