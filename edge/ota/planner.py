"""Pure decisions of the device's firmware update: no I/O, time and randomness passed in.

- `BootState`: the A/B boot record (which slot is active, which one is on trial, how many boots the trial
  has had, the anti-rollback floor). `on_boot` decides what a (re)start does: run normally, run the health
  check of a trial slot, or roll back a trial that has used up its boots (a firmware that never comes up
  healthy, or a power cut during every health check).
- `resume_point`: where a job picks up after a restart (fresh, resume the download, install again, wait
  for the boot, or already finished).
- `defer_reason`, `retry_delay`, `may_retry`: when to wait and how long.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

Slot = Literal["a", "b"]


@dataclass(frozen=True, slots=True)
class OtaSettings:
    retry_min_s: float = 2.0
    retry_max_s: float = 300.0
    max_attempts: int = 5  # download attempts per job
    defer_check_s: float = 30.0  # how often a deferred job looks again
    stall_timeout_s: float = 30.0  # a download that receives nothing this long is cut and resumed
    connect_timeout_s: float = 10.0
    health_timeout_s: float = 60.0  # connect + birth + pluggable check must pass within this
    max_boot_attempts: int = 2  # boots a trial slot gets before the device rolls back by itself
    progress_step: float = 0.25  # report download progress every quarter
    default_deadline_s: float = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class BootState:
    active: Slot = "a"
    pending: Slot | None = None  # the slot on trial (installed, not yet committed)
    attempts: int = 0  # boots of the pending slot so far
    versions: dict[str, str] = field(default_factory=dict)  # slot -> firmware version in it
    codes: dict[str, int] = field(default_factory=dict)  # slot -> version_code
    floor: int = 0  # anti-rollback: the device refuses a version_code below this
    job_id: str = ""  # the job that put `pending` there
    rollout_id: int = 0

    @property
    def running(self) -> Slot:
        return self.pending if self.pending is not None else self.active

    @property
    def inactive(self) -> Slot:
        return "b" if self.active == "a" else "a"

    def version_of(self, slot: Slot, factory: str) -> str:
        return self.versions.get(slot, factory if slot == "a" else "")


class BootAction(StrEnum):
    NORMAL = "normal"
    HEALTH_CHECK = "health_check"  # running a trial slot: prove it healthy, then commit
    ROLLED_BACK = "rolled_back"  # the trial used up its boots: back on the active slot


def on_boot(state: BootState, max_attempts: int) -> tuple[BootState, BootAction]:
    """What this boot does, and the state to save BEFORE doing it (so a crash counts as a boot)."""
    if state.pending is None:
        return state, BootAction.NORMAL
    if state.attempts >= max_attempts:
        return rolled_back(state), BootAction.ROLLED_BACK
    return replace(state, attempts=state.attempts + 1), BootAction.HEALTH_CHECK


def staged(state: BootState, slot: Slot, version: str, code: int, job_id: str, rollout_id: int) -> BootState:
    return replace(
        state,
        pending=slot,
        attempts=0,
        versions={**state.versions, slot: version},
        codes={**state.codes, slot: code},
        job_id=job_id,
        rollout_id=rollout_id,
    )


def committed(state: BootState) -> BootState:
    if state.pending is None:
        return state
    code = state.codes.get(state.pending, 0)
    return replace(state, active=state.pending, pending=None, attempts=0, floor=max(state.floor, code))


def rolled_back(state: BootState) -> BootState:
    return replace(state, pending=None, attempts=0)


class Resume(StrEnum):
    FRESH = "fresh"
    DOWNLOAD = "download"  # a part file exists: continue it with a Range request
    INSTALL = "install"  # downloaded (maybe installed halfway): verify and install again
    AWAIT_BOOT = "await_boot"  # installed and staged: the boot decides (health check)
    FINISHED = "finished"  # already done (succeeded, failed, rolled back or cancelled): nothing to do


def resume_point(
    job_id: str, boot: BootState, finished: frozenset[str], stage: str | None, part_bytes: int
) -> Resume:
    """Where job `job_id` continues after a restart. `stage` is the last stage recorded for it."""
    if job_id in finished:
        return Resume.FINISHED
    if boot.pending is not None and boot.job_id == job_id:
        return Resume.AWAIT_BOOT
    if stage in ("installing", "verifying") and part_bytes > 0:
        return Resume.INSTALL
    if part_bytes > 0:
        return Resume.DOWNLOAD
    return Resume.FRESH


def defer_reason(*, session_running: bool, battery_pct: float | None, min_battery_pct: float) -> str | None:
    if session_running:
        return "a treatment session is running: the update waits until it ends"
    if battery_pct is not None and battery_pct < min_battery_pct:
        return f"battery {battery_pct:.0f}% below the {min_battery_pct:.0f}% this update needs: charge the device"
    return None


def retry_delay(attempt: int, settings: OtaSettings, rand: float) -> float:
    """Capped exponential backoff with full jitter; `attempt` counts from 1, `rand` in [0, 1)."""
    cap = min(settings.retry_max_s, settings.retry_min_s * float(2 ** max(0, attempt - 1)))
    return max(settings.retry_min_s / 2, cap * rand)


def may_retry(attempt: int, retryable: bool, settings: OtaSettings) -> bool:
    return retryable and attempt < settings.max_attempts


def progress_due(last_reported: float, now_fraction: float, step: float) -> bool:
    return now_fraction >= 1.0 or now_fraction - last_reported >= step
