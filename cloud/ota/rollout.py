"""The rollout planner: pure. Inputs are the plan, where the rollout stands, the job counts per state per
wave and `now`; the output is a list of decisions that service.py applies.

Gates, per wave (evaluated in this order):
1. error gate: once at least `min_sample` jobs of the wave have finished, if the failures since the last
   resume (failed + rolled back) exceed `error_ratio` of the finished ones, the rollout pauses. Jobs
   already sent run on (a device cannot be stopped mid-install); nothing new is sent, in this wave or any
   later one, until an operator resumes. A resume acknowledges the failures seen so far.
2. pacing: at most `max_in_flight` jobs of the wave are out (sent, not finished) at a time.
3. success gate: when `success_ratio` of the wave's jobs (cancelled ones aside) have succeeded, the wave
   has passed; after `soak_s` more seconds the next wave starts (or the rollout completes).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

import msgspec

ERROR_STATES = frozenset({"failed", "rolled_back"})
FINISHED_STATES = frozenset({"succeeded", "failed", "rolled_back", "cancelled"})


class RolloutPlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    canaries: tuple[str, ...] = ()  # wave 0 when non-empty: these devices first
    percents: tuple[Annotated[float, msgspec.Meta(gt=0, le=100)], ...] = (
        1.0,
        10.0,
        50.0,
        100.0,
    )  # cumulative
    success_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.95
    error_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.02
    min_sample: Annotated[int, msgspec.Meta(ge=1)] = 20
    soak_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    max_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 1000
    job_deadline_s: Annotated[float, msgspec.Meta(gt=0)] = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        if list(self.percents) != sorted(self.percents) or (self.percents and self.percents[-1] != 100.0):
            raise ValueError("percents are cumulative, increasing and end at 100, e.g. 1,10,50,100")


def assign_waves(rollout_key: str, targets: Sequence[str], plan: RolloutPlan) -> list[list[str]]:
    """Split the targets into waves: the canaries first, then cumulative percentages of the rest, in a
    stable pseudo-random order (sha256 of key and device id), so no wave is biased by device-id order."""
    canaries = [d for d in plan.canaries if d in set(targets)]
    rest = sorted(
        (d for d in set(targets) if d not in set(canaries)),
        key=lambda d: hashlib.sha256(f"{rollout_key}:{d}".encode()).digest(),
    )
    waves: list[list[str]] = [canaries] if plan.canaries else []
    start = 0
    for pct in plan.percents:
        end = max(start, math.ceil(len(rest) * pct / 100.0))
        waves.append(rest[start:end])
        start = end
    return waves


@dataclass(frozen=True, slots=True)
class WaveCounts:
    size: int
    by_state: dict[str, int] = field(default_factory=dict)

    def n(self, *states: str) -> int:
        return sum(self.by_state.get(s, 0) for s in states)

    @property
    def pending(self) -> int:
        return self.n("pending")

    @property
    def succeeded(self) -> int:
        return self.n("succeeded")

    @property
    def errors(self) -> int:
        return self.n(*ERROR_STATES)

    @property
    def finished(self) -> int:
        return self.n(*FINISHED_STATES) - self.n("cancelled")

    @property
    def in_flight(self) -> int:
        return self.size - self.pending - self.n(*FINISHED_STATES)


@dataclass(frozen=True, slots=True)
class RolloutView:
    status: str  # running | paused | cancelling | cancelled | completed
    wave: int
    gate_met_at: datetime | None = None
    error_baseline: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Dispatch:
    wave: int
    count: int


@dataclass(frozen=True, slots=True)
class GateMet:
    wave: int
    at: datetime


@dataclass(frozen=True, slots=True)
class Advance:
    wave: int  # the wave that starts now


@dataclass(frozen=True, slots=True)
class Pause:
    reason: str


@dataclass(frozen=True, slots=True)
class Complete:
    pass


Decision = Dispatch | GateMet | Advance | Pause | Complete


def decide(
    plan: RolloutPlan, view: RolloutView, waves: Sequence[WaveCounts], now: datetime
) -> list[Decision]:
    if view.status != "running" or not waves:
        return []
    w = min(view.wave, len(waves) - 1)
    c = waves[w]
    new_errors = c.errors - view.error_baseline.get(w, 0)
    if c.finished >= plan.min_sample and new_errors > 0 and new_errors / c.finished > plan.error_ratio:
        return [
            Pause(
                f"error gate: wave {w}: {new_errors} of {c.finished} finished jobs failed or rolled back "
                f"({new_errors / c.finished:.1%} > {plan.error_ratio:.1%}); check the reports, then resume "
                "(the failures so far are acknowledged) or cancel / roll back"
            )
        ]
    out: list[Decision] = []
    room = plan.max_in_flight - c.in_flight
    if c.pending and room > 0:
        out.append(Dispatch(w, min(c.pending, room)))
    if c.pending:  # every job of the wave goes out before the next wave may start
        return out
    eligible = c.size - c.n("cancelled")
    passed = c.succeeded >= math.ceil(plan.success_ratio * eligible) if eligible else True
    if not passed:
        return out
    if view.gate_met_at is None and plan.soak_s > 0:
        return [*out, GateMet(w, now)]
    if view.gate_met_at is not None and (now - view.gate_met_at).total_seconds() < plan.soak_s:
        return out
    return [*out, Advance(w + 1) if w + 1 < len(waves) else Complete()]
