"""Quarantined messages (rejected by ingest with a reason, raw bytes kept): counts by reason and a list."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from psycopg.rows import dict_row
from pydantic import AwareDatetime

from cloud.api.deps import AUTH_ERRORS, Conn, Viewer, problems
from cloud.api.models import NO_NUL, QuarantineDetail, QuarantineItem, QuarantinePage, ReasonCount
from cloud.api.window import window

router = APIRouter(prefix="/quarantine", tags=["quarantine"], responses=AUTH_ERRORS)

DEFAULT_SPAN = timedelta(days=1)
MAX_SPAN = timedelta(days=366)
ITEM = (
    "id, received_at, topic, reason, detail, consumer, octet_length(payload) as payload_size, "
    "encode(payload_sha256, 'hex') as payload_sha256"
)
COUNTS_SQL = """
select reason, count(*) as count from quarantine where received_at >= %s and received_at < %s
group by reason order by count desc, reason
"""
ITEMS_SQL = f"""
select {ITEM} from quarantine
where received_at >= %s and received_at < %s and (%s::text is null or reason = %s)
order by received_at desc, id desc limit %s
"""
ONE_SQL = f"select {ITEM}, payload from quarantine where id = %s"


@router.get("", summary="Quarantine in [since, until): rows per reason, and the newest rows")
async def list_quarantine(
    request: Request,
    conn: Conn,
    _who: Viewer,
    reason: Annotated[
        str | None, Query(max_length=64, pattern=NO_NUL, description="e.g. schema, too_late")
    ] = None,
    since: Annotated[AwareDatetime | None, Query(description="default: until - 1 day")] = None,
    until: Annotated[AwareDatetime | None, Query(description="default: now")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> QuarantinePage:
    start, end = window(request, since, until, DEFAULT_SPAN, MAX_SPAN)
    cur = conn.cursor(row_factory=dict_row)
    counts = await (await cur.execute(COUNTS_SQL, (start, end))).fetchall()
    items = await (await cur.execute(ITEMS_SQL, (start, end, reason, reason, limit))).fetchall()
    return QuarantinePage(
        since=start,
        until=end,
        counts=[ReasonCount(**c) for c in counts],
        items=[QuarantineItem(**i) for i in items],
    )


@router.get(
    "/{item_id}", summary="One quarantined message with its raw payload (base64)", responses=problems(404)
)
async def get_quarantined(
    conn: Conn, _who: Viewer, item_id: Annotated[int, Path(ge=1, le=2**63 - 1)]
) -> QuarantineDetail:
    cur = conn.cursor(row_factory=dict_row)
    row: dict[str, Any] | None = await (await cur.execute(ONE_SQL, (item_id,))).fetchone()
    if row is None:
        raise HTTPException(404, f"no quarantined message {item_id}")
    payload = bytes(row.pop("payload"))
    return QuarantineDetail(**row, payload_base64=base64.b64encode(payload).decode())
