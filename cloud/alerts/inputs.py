"""Pure views the rules read: the device profile and the device's recent session history.

The "day" of a session is the user's LOCAL day on which it STARTED (`started_at + tz_offset_min`): a
session from 23:50 to 00:10 counts entirely on the day it began. That keeps a session in exactly one day,
and the day cannot change when the session's end arrives late.

`DeviceHistory` is keyed by session id: building it from sessions in any order, with duplicates, gives
the same value, so the rules cannot depend on arrival order.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta

import msgspec

from cloud.alerts.decision import OpenAlerts
from cloud.alerts.params import RuleId, Severity
from contract.messages import DeviceEvent, EndReason, SessionEnd


class Contraindications(msgspec.Struct, frozen=True, kw_only=True):
    pregnancy: bool = False
    implanted_electronics: bool = False  # pacemaker, defibrillator, neurostimulator, ECG monitor
    epilepsy: bool = False
    active_cancer: bool = False
    under_18: bool = False  # declared; `birth_date` is used when known
    birth_date: date | None = None
    last_surgery_on: date | None = None
    recent_surgery: bool = (
        False  # declared without a date (the profile's flag): blocks like a date < 12 months
    )
    metal_implants: bool = False
    diabetes: bool = False
    neck_contraindicated: bool = False  # e.g. a thyroid condition: no neck use (O7)


class DeviceProfile(msgspec.Struct, frozen=True, kw_only=True):
    device_id: str
    model: str = ""
    tz_offset_min: int = 0
    contraindications: Contraindications = Contraindications()


class SessionRecord(msgspec.Struct, frozen=True, kw_only=True):
    session_id: str
    started_at: datetime
    ended_at: datetime
    end_reason: EndReason
    tz_offset_min: int = 0
    duration_active_s: float = 0.0
    level_start: int = 0
    level_max: int = 0
    level_changes_up: int = 0
    level_changes_down: int = 0
    boost_active_s: float = 0.0
    current_ua_p95: float = 0.0
    current_ua_max: float = 0.0
    time_at_max_s: float | None = None  # seconds at the model's max level, when the engine computed it
    events: tuple[DeviceEvent, ...] = ()  # level_change and discomfort events of this session

    @classmethod
    def from_end(
        cls,
        end: SessionEnd,
        tz_offset_min: int = 0,
        events: Iterable[DeviceEvent] = (),
        time_at_max_s: float | None = None,
    ) -> SessionRecord:
        s = end.summary
        own = {e.seq: e for e in events if e.session_id in (None, end.session_id)}
        return cls(
            session_id=end.session_id,
            started_at=end.started_at,
            ended_at=end.ended_at,
            end_reason=end.end_reason,
            tz_offset_min=tz_offset_min,
            duration_active_s=s.duration_active_s,
            level_start=s.level_start,
            level_max=s.level_max,
            level_changes_up=s.level_changes_up,
            level_changes_down=s.level_changes_down,
            boost_active_s=s.boost_active_s,
            current_ua_p95=s.current_ua_p95,
            current_ua_max=s.current_ua_max,
            time_at_max_s=time_at_max_s,
            events=tuple(sorted(own.values(), key=lambda e: (e.at, e.seq))),
        )

    @property
    def local_day(self) -> date:
        return local_day(self.started_at, self.tz_offset_min)


def local_day(at: datetime, tz_offset_min: int) -> date:
    return (at + timedelta(minutes=tz_offset_min)).date()


def _rank(r: SessionRecord) -> tuple[datetime, float, int, bytes]:
    """Which copy of a duplicated session wins: a deterministic choice, independent of arrival order."""
    return (r.ended_at, r.duration_active_s, len(r.events), msgspec.json.encode(r))


class DeviceHistory(msgspec.Struct, frozen=True, kw_only=True):
    """Recent sessions of one device (sorted, one per session id), its first-seen time, its open alerts."""

    first_seen: datetime
    sessions: tuple[SessionRecord, ...] = ()
    open_alerts: dict[tuple[RuleId, str], Severity] = {}
    baseline_level: float | None = (
        None  # T2: median level of the first 14 days, if those sessions were pruned
    )

    @classmethod
    def of(
        cls,
        first_seen: datetime,
        sessions: Iterable[SessionRecord],
        open_alerts: OpenAlerts | None = None,
        baseline_level: float | None = None,
    ) -> DeviceHistory:
        by_id: dict[str, SessionRecord] = {}
        for r in sessions:
            kept = by_id.get(r.session_id)
            if kept is None or _rank(r) > _rank(kept):
                by_id[r.session_id] = r
        ordered = tuple(sorted(by_id.values(), key=lambda r: (r.started_at, r.session_id)))
        return cls(
            first_seen=first_seen,
            sessions=ordered,
            open_alerts=dict(open_alerts or {}),
            baseline_level=baseline_level,
        )

    def with_session(self, record: SessionRecord) -> DeviceHistory:
        return DeviceHistory.of(
            self.first_seen, (*self.sessions, record), self.open_alerts, self.baseline_level
        )

    def get(self, session_id: str) -> SessionRecord | None:
        return next((r for r in self.sessions if r.session_id == session_id), None)
