"""Builders for the alert rule tests (no tests here): contract messages and history views with defaults."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cloud.alerts.rules import (
    AlertDecision,
    DeviceHistory,
    DeviceProfile,
    RuleParams,
    SessionRecord,
    SessionState,
    evaluate_in_session,
)
from contract.messages import (
    DeviceEvent,
    EndReason,
    EventType,
    Sample,
    SampleBatch,
    SessionEnd,
    SessionStart,
    SessionSummary,
    Zone,
)

DEV = "dev-1"
T0 = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)  # a Monday
_seq = itertools.count(1)


def summary(
    active_s: float = 300.0, level_start: int = 2, level_max: int | None = None, **kw: Any
) -> SessionSummary:
    return SessionSummary(
        duration_on_s=kw.pop("duration_on_s", active_s),
        duration_active_s=active_s,
        samples=int(active_s),
        level_start=level_start,
        level_max=level_start if level_max is None else level_max,
        **kw,
    )


def end(
    sid: str, start: datetime, active_s: float = 300.0, reason: EndReason = EndReason.USER, **kw: Any
) -> SessionEnd:
    return SessionEnd(
        device_id=DEV,
        seq=next(_seq),
        ts=start + timedelta(seconds=active_s + 5),
        session_id=sid,
        started_at=start,
        ended_at=start + timedelta(seconds=active_s),
        end_reason=reason,
        summary=summary(active_s, **kw),
    )


def record(
    sid: str,
    start: datetime,
    active_s: float = 300.0,
    reason: EndReason = EndReason.USER,
    tz: int = 0,
    events: Iterable[DeviceEvent] = (),
    **kw: Any,
) -> SessionRecord:
    return SessionRecord.from_end(end(sid, start, active_s, reason, **kw), tz, events)


def level_event(sid: str, at: datetime, frm: int, to: int) -> DeviceEvent:
    return DeviceEvent(
        device_id=DEV,
        seq=next(_seq),
        ts=at,
        event=EventType.LEVEL_CHANGE,
        at=at,
        session_id=sid,
        level_from=frm,
        level_to=to,
    )


def discomfort(sid: str, at: datetime, score: float) -> DeviceEvent:
    return DeviceEvent(
        device_id=DEV, seq=next(_seq), ts=at, event=EventType.DISCOMFORT, at=at, session_id=sid, value=score
    )


def history(sessions: Iterable[SessionRecord], first_seen: datetime = T0, **kw: Any) -> DeviceHistory:
    return DeviceHistory.of(first_seen, sessions, **kw)


def sample(
    t: datetime,
    current: float = 160.0,
    imp: float = 5_000.0,
    contact: bool = True,
    zone: Zone | None = None,
    level: int = 2,
) -> Sample:
    return Sample(
        t=t, current_ua=current, voltage_v=1.0, impedance_ohm=imp, contact=contact, zone=zone, level=level
    )


def start_msg(sid: str, start: datetime, level: int = 2, tz: int = 0) -> SessionStart:
    return SessionStart(
        device_id=DEV,
        seq=next(_seq),
        ts=start,
        session_id=sid,
        started_at=start,
        level=level,
        tz_offset_min=tz,
    )


def run_session(
    samples: Sequence[Sample],
    params: RuleParams,
    profile: DeviceProfile | None = None,
    sid: str = "s1",
    start: datetime = T0,
    final: SessionEnd | None = None,
    batch: int = 10,
) -> tuple[SessionState, list[AlertDecision]]:
    """Feed a session's samples in batches (then its end, if given); return the state and all decisions."""
    st = SessionState.start(profile or DeviceProfile(device_id=DEV), sid, start)
    out: list[AlertDecision] = []
    for i in range(0, len(samples), batch):
        msg = SampleBatch(
            device_id=DEV,
            seq=next(_seq),
            ts=samples[i].t,
            session_id=sid,
            samples=tuple(samples[i : i + batch]),
        )
        st, d = evaluate_in_session(msg, st, params, msg.ts)
        out += d
    if final is not None:
        st, d = evaluate_in_session(final, st, params, final.ts)
        out += d
    return st, out


def secs(start: datetime, n: int, **kw: Any) -> list[Sample]:
    """n samples at 1 Hz from `start`, all with the same values."""
    return [sample(start + timedelta(seconds=i), **kw) for i in range(n)]
