"""Quiet hours for device notices, pure: when may a notice of this severity reach this user?

Quiet hours are a window of the user's LOCAL wall-clock time (IANA zone from the profile, else a fixed
UTC offset), e.g. 22:00-08:00 spanning midnight. A notice raised inside the window is held until its
end; a CRITICAL one (a safety alert) is never held. Daylight-saving gaps and folds are handled by
zoneinfo: the release is the first instant whose local time is at or after the window's end.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cloud.alerts.params import Severity


def user_tz(tz_name: str | None, tz_offset_min: int | None) -> tzinfo:
    """The user's zone: the IANA name if it is known, else the fixed offset, else UTC."""
    if tz_name:
        try:
            return ZoneInfo(tz_name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return timezone(timedelta(minutes=tz_offset_min or 0))


def in_quiet_hours(local: time, start: time, end: time) -> bool:
    if start == end:
        return False  # an empty window: quiet hours are off
    if start < end:
        return start <= local < end
    return local >= start or local < end  # the window spans midnight


def release_at(now: datetime, severity: Severity, tz: tzinfo, start: time, end: time) -> datetime:
    """When a notice raised at `now` (aware) may be sent: `now`, or the end of the quiet window."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    local = now.astimezone(tz)
    if severity >= Severity.CRITICAL or not in_quiet_hours(local.timetz().replace(tzinfo=None), start, end):
        return now
    day = local.date() if local.time() < end else local.date() + timedelta(days=1)
    wall = datetime.combine(day, end).replace(tzinfo=tz)
    # across a DST gap the wall time may not exist: normalise through UTC and never go backwards
    return max(now, wall.astimezone(UTC))
