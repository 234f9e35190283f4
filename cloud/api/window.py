"""Time windows of list queries: defaults and bounds (pure)."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import Request
from fastapi.exceptions import RequestValidationError


class WindowError(ValueError):
    pass


def resolve(
    since: datetime | None,
    until: datetime | None,
    now: datetime,
    default_span: timedelta,
    max_span: timedelta,
) -> tuple[datetime, datetime]:
    """[since, until): `until` defaults to now, `since` to until - default_span; at most max_span wide."""
    end = until or now
    try:
        start = since or end - default_span
    except OverflowError:
        raise WindowError(f"until ({end.isoformat()}) is too early; give a later one or a since") from None
    if start >= end:
        raise WindowError(f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
    if end - start > max_span:
        raise WindowError(f"the window is at most {max_span.days} days wide; narrow since/until")
    return start, end


def window(
    request: Request,
    since: datetime | None,
    until: datetime | None,
    default_span: timedelta,
    max_span: timedelta,
) -> tuple[datetime, datetime]:
    """`resolve` with the app's clock; a bad window is a 422 (the usual validation error body) that says what to change."""
    try:
        return resolve(since, until, request.app.state.clock(), default_span, max_span)
    except WindowError as exc:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "since"), "msg": str(exc), "input": None}]
        ) from None
