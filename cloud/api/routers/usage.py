"""Usage from the usage_* rollups (hourly or daily UTC buckets): per device, and for the whole fleet.

Rollups trail the samples by minutes (cloud/db/rollups.py): every answer carries `fresh_as_of`, the time
before which every stored sample is counted; buckets from then on may still grow."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from psycopg.rows import dict_row
from pydantic import AwareDatetime, Field

from cloud.api.deps import AUTH_ERRORS, Conn, Viewer
from cloud.api.models import Grain, Usage, UsageBucket
from cloud.api.routers.devices import DevicePath
from cloud.api.window import window
from cloud.db.rollups import FRESH_AS_OF

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


class FreshUsage(Usage):
    fresh_as_of: datetime | None = Field(
        description="every sample stored before this time is counted; later buckets may still grow (the "
        "rollups are refreshed every few minutes: ingest's housekeeping on plain PostgreSQL, the refresh "
        "policies on TimescaleDB). null: unknown"
    )


Since = Annotated[AwareDatetime | None, Query(description="default: until - 2 days (hour) or 30 days (day)")]
Until = Annotated[AwareDatetime | None, Query(description="default: now")]


async def _fresh(conn: Conn, grain: str) -> datetime | None:
    row = await (await conn.execute(FRESH_AS_OF, (grain,))).fetchone()
    return None if row is None else row[0]


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
) -> FreshUsage:
    start, end = window(request, since, until, *SPANS[grain])
    sql = DEVICE_SQL.format(grain=RELATION[grain])
    fresh = await _fresh(conn, grain)  # before the buckets: a refresh in between only makes it older
    buckets = await _buckets(conn, sql, (device_id, start, end))
    return FreshUsage(
        scope=device_id, grain=grain, since=start, until=end, buckets=buckets, fresh_as_of=fresh
    )


@router.get("/usage/fleet", summary="The fleet's usage per hour or day (UTC buckets)")
async def fleet_usage(
    request: Request, conn: Conn, _who: Viewer, grain: Grain = "day", since: Since = None, until: Until = None
) -> FreshUsage:
    start, end = window(request, since, until, *SPANS[grain])
    fresh = await _fresh(conn, grain)
    buckets = await _buckets(conn, FLEET_SQL.format(grain=RELATION[grain]), (start, end))
    return FreshUsage(scope="fleet", grain=grain, since=start, until=end, buckets=buckets, fresh_as_of=fresh)
