"""Sessions of a device: a list in a time window (newest first), and one session with its summary."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from psycopg.rows import dict_row
from pydantic import AwareDatetime

from cloud.api.deps import AUTH_ERRORS, Conn, Viewer, problems
from cloud.api.models import NO_NUL, Session, SessionBrief
from cloud.api.routers.devices import DevicePath
from cloud.api.window import window

router = APIRouter(prefix="/devices/{device_id}/sessions", tags=["sessions"], responses=AUTH_ERRORS)

DEFAULT_SPAN = timedelta(days=30)
MAX_SPAN = timedelta(days=731)
BRIEF = tuple(SessionBrief.model_fields)
FULL = tuple(Session.model_fields)
# The window bounds started_at, so only the partitions (chunks) of the window are read.
LIST_SQL = f"""
select {", ".join(BRIEF)} from sessions
where device_id = %s and started_at >= %s and started_at < %s
order by started_at desc limit %s
"""
# A session id is unique per device; should the same id appear twice, the latest start is the one shown.
ONE_SQL = f"""
select {", ".join(FULL)} from sessions where device_id = %s and session_id = %s
order by started_at desc limit 1
"""


@router.get("", summary="Sessions of a device that started in [since, until), newest first")
async def list_sessions(
    request: Request,
    conn: Conn,
    _who: Viewer,
    device_id: DevicePath,
    since: Annotated[AwareDatetime | None, Query(description="default: until - 30 days")] = None,
    until: Annotated[AwareDatetime | None, Query(description="default: now")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[SessionBrief]:
    start, end = window(request, since, until, DEFAULT_SPAN, MAX_SPAN)
    cur = conn.cursor(row_factory=dict_row)
    rows = await (await cur.execute(LIST_SQL, (device_id, start, end, limit))).fetchall()
    return [SessionBrief(**r) for r in rows]


@router.get("/{session_id}", summary="One session with its summary", responses=problems(404))
async def get_session(
    conn: Conn,
    _who: Viewer,
    device_id: DevicePath,
    session_id: Annotated[str, Path(min_length=1, max_length=128, pattern=NO_NUL)],
) -> Session:
    cur = conn.cursor(row_factory=dict_row)
    row = await (await cur.execute(ONE_SQL, (device_id, session_id))).fetchone()
    if row is None:
        raise HTTPException(404, f"no session {session_id!r} for device {device_id!r}")
    return Session(**row)
