"""Usage from the usage_* rollups (hourly or daily UTC buckets): per device, and for the whole fleet."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from psycopg.rows import dict_row
from pydantic import AwareDatetime

from cloud.api.deps import AUTH_ERRORS, Conn, Viewer
from cloud.api.models import Grain, Usage, UsageBucket
from cloud.api.routers.devices import DevicePath
from cloud.api.window import window

router = APIRouter(tags=["usage"], responses=AUTH_ERRORS)

# (default window, widest window) per grain: at most ~2,200 hourly or ~730 daily buckets per answer.
SPANS = {
    "hour": (timedelta(days=2), timedelta(days=92)),
    "day": (timedelta(days=30), timedelta(days=731)),
}
RELATION = {"hour": "hourly", "day": "daily"}
DEVICE_SQL = """
select bucket, samples, active_s, current_ua_avg, current_ua_max, level_max
from usage_device_{grain} where device_id = %s and bucket >= %s and bucket < %s order by bucket
"""
FLEET_SQL = """
select bucket, samples, active_s, current_ua_avg, current_ua_max, devices
from usage_fleet_{grain} where bucket >= %s and bucket < %s order by bucket
"""
Since = Annotated[AwareDatetime | None, Query(description="default: until - 2 days (hour) or 30 days (day)")]
Until = Annotated[AwareDatetime | None, Query(description="default: now")]


async def _buckets(conn: Conn, sql: str, params: tuple[Any, ...]) -> list[UsageBucket]:
    cur = conn.cursor(row_factory=dict_row)
    rows = await (await cur.execute(sql.encode(), params)).fetchall()
    return [UsageBucket(**r) for r in rows]


@router.get("/devices/{device_id}/usage", summary="A device's usage per hour or day (UTC buckets)")
async def device_usage(
    request: Request,
    conn: Conn,
    _who: Viewer,
    device_id: DevicePath,
    grain: Grain = "day",
    since: Since = None,
    until: Until = None,
) -> Usage:
    start, end = window(request, since, until, *SPANS[grain])
    sql = DEVICE_SQL.format(grain=RELATION[grain])
    buckets = await _buckets(conn, sql, (device_id, start, end))
    return Usage(scope=device_id, grain=grain, since=start, until=end, buckets=buckets)


@router.get("/usage/fleet", summary="The fleet's usage per hour or day (UTC buckets)")
async def fleet_usage(
    request: Request, conn: Conn, _who: Viewer, grain: Grain = "day", since: Since = None, until: Until = None
) -> Usage:
    start, end = window(request, since, until, *SPANS[grain])
    buckets = await _buckets(conn, FLEET_SQL.format(grain=RELATION[grain]), (start, end))
    return Usage(scope="fleet", grain=grain, since=start, until=end, buckets=buckets)
