"""The usage_* rollups (docs/data-model.md), refreshed the same way on both storage paths.

`refresh_rollups(conn, since, until)` recomputes every bucket touched by [since, until): on TimescaleDB
it calls refresh_continuous_aggregate (the refresh policies also do this in the background); on plain
PostgreSQL it recomputes the rollup tables for those hours and days (delete + insert of whole buckets in
one transaction, so a rerun gives the same rows and a bucket whose samples are gone loses its row).
`refresh_pending_rollups(conn)` (plain path) consumes the hours recorded by the samples trigger, so late
rows are rolled up without anyone having to know their time range.

Rollups are not real time: ingest's housekeeping runs `refresh_pending_rollups` every few minutes (plain
path) and TimescaleDB's refresh policies every 15 minutes (hourly) or hour (daily), leaving the bucket
being written. `fresh_as_of(conn, grain)` (SQL `usage_fresh_as_of(grain)`, migration 0007) says how far
they are complete: every stored sample before that time is in the rollups; null means unknown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from cloud.db.migrate import StoragePath, current_path

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
ROLLUP_LOCK = 0x6D66726F6C6C00  # serialises plain-path refreshes ("mfroll")
CAGGS = ("usage_device_hourly", "usage_fleet_hourly", "usage_device_daily", "usage_fleet_daily")


FRESH_AS_OF = "select usage_fresh_as_of(%s)"


def fresh_as_of(conn: psycopg.Connection[Any], grain: str = "hour") -> datetime | None:
    """Every sample stored before this time is in the `grain` ('hour' or 'day') rollups; None: unknown."""
    row = conn.execute(FRESH_AS_OF, (grain,)).fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True, slots=True)
class RefreshReport:
    hours: int  # hourly buckets recomputed
    days: int  # daily buckets recomputed


def floor_to(t: datetime, step: timedelta) -> datetime:
    if t.tzinfo is None:
        raise ValueError(f"{t!r} is naive: pass an aware UTC datetime")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((t - epoch) // step) * step


def ceil_to(t: datetime, step: timedelta) -> datetime:
    f = floor_to(t, step)
    return f if f == t else f + step


def merge_ranges(starts: Iterable[datetime], step: timedelta) -> list[tuple[datetime, datetime]]:
    """Pure: bucket starts -> sorted, merged [lo, hi) ranges of contiguous buckets."""
    ranges: list[tuple[datetime, datetime]] = []
    for s in sorted(set(starts)):
        if ranges and ranges[-1][1] == s:
            ranges[-1] = (ranges[-1][0], s + step)
        else:
            ranges.append((s, s + step))
    return ranges


def buckets(lo: datetime, hi: datetime, step: timedelta) -> list[datetime]:
    out, t = [], lo
    while t < hi:
        out.append(t)
        t += step
    return out


_HOURLY = [
    "delete from usage_device_hourly where bucket >= %(lo)s and bucket < %(hi)s",
    """insert into usage_device_hourly
       select date_trunc('hour', ts, 'UTC'), device_id, count(*), count(*) filter (where contact),
              avg(current_ua::double precision), max(current_ua), max(level),
              sum(current_ua::double precision), count(current_ua)
       from samples where ts >= %(lo)s and ts < %(hi)s group by 1, 2""",
    "delete from usage_fleet_hourly where bucket >= %(lo)s and bucket < %(hi)s",
    """insert into usage_fleet_hourly
       select bucket, count(*), sum(samples), sum(active_s), sum(current_ua_sum) / nullif(sum(current_ua_count), 0),
              max(current_ua_max), sum(current_ua_sum), sum(current_ua_count)
       from usage_device_hourly where bucket >= %(lo)s and bucket < %(hi)s group by 1""",
]
_DAILY = [
    "delete from usage_device_daily where bucket >= %(lo)s and bucket < %(hi)s",
    """insert into usage_device_daily
       select date_trunc('day', bucket, 'UTC'), device_id, sum(samples), sum(active_s),
              sum(current_ua_sum) / nullif(sum(current_ua_count), 0), max(current_ua_max), max(level_max),
              sum(current_ua_sum), sum(current_ua_count)
       from usage_device_hourly where bucket >= %(lo)s and bucket < %(hi)s group by 1, 2""",
    "delete from usage_fleet_daily where bucket >= %(lo)s and bucket < %(hi)s",
    """insert into usage_fleet_daily
       select bucket, count(*), sum(samples), sum(active_s), sum(current_ua_sum) / nullif(sum(current_ua_count), 0),
              max(current_ua_max), sum(current_ua_sum), sum(current_ua_count)
       from usage_device_daily where bucket >= %(lo)s and bucket < %(hi)s group by 1""",
]


def _recompute(conn: psycopg.Connection[Any], hours: Iterable[datetime]) -> RefreshReport:
    """Plain path, inside the caller's transaction: recompute these hourly buckets and their days."""
    hour_ranges = merge_ranges(hours, HOUR)
    day_ranges = merge_ranges(
        (floor_to(h, DAY) for lo, hi in hour_ranges for h in buckets(lo, hi, HOUR)), DAY
    )
    for lo, hi in hour_ranges:
        for stmt in _HOURLY:
            conn.execute(stmt, {"lo": lo, "hi": hi})
    for lo, hi in day_ranges:
        for stmt in _DAILY:
            conn.execute(stmt, {"lo": lo, "hi": hi})
    return RefreshReport(
        hours=sum(len(buckets(lo, hi, HOUR)) for lo, hi in hour_ranges),
        days=sum(len(buckets(lo, hi, DAY)) for lo, hi in day_ranges),
    )


def _require_path(conn: psycopg.Connection[Any]) -> StoragePath:
    path = current_path(conn)
    if path is None:
        raise RuntimeError("this database has no microfleet schema yet: run `microfleet db migrate` first")
    return path


def refresh_rollups(conn: psycopg.Connection[Any], since: datetime, until: datetime) -> RefreshReport:
    """Recompute every usage_* bucket touched by [since, until). Idempotent.

    On TimescaleDB the connection must be in autocommit mode (refresh_continuous_aggregate cannot run
    inside a transaction)."""
    lo, hi = floor_to(since, HOUR), ceil_to(until, HOUR)
    if hi <= lo:
        return RefreshReport(0, 0)
    if _require_path(conn) is StoragePath.TIMESCALE:
        if not conn.autocommit:
            raise RuntimeError("refresh_rollups on TimescaleDB needs an autocommit connection")
        dlo, dhi = floor_to(lo, DAY), ceil_to(hi, DAY)
        for view in CAGGS:
            w = (lo, hi) if view.endswith("hourly") else (dlo, dhi)
            conn.execute("call refresh_continuous_aggregate(%s, %s, %s)", (view, *w))
        return RefreshReport(len(buckets(lo, hi, HOUR)), len(buckets(dlo, dhi, DAY)))
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (ROLLUP_LOCK,))
        conn.execute("delete from rollup_pending where bucket >= %s and bucket < %s", (lo, hi))
        return _recompute(conn, buckets(lo, hi, HOUR))


def refresh_pending_rollups(conn: psycopg.Connection[Any]) -> RefreshReport:
    """Plain path: roll up the hours that received samples since the last refresh (TimescaleDB: the
    refresh policies do this; returns an empty report)."""
    if _require_path(conn) is StoragePath.TIMESCALE:
        return RefreshReport(0, 0)
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (ROLLUP_LOCK,))
        rows = conn.execute("delete from rollup_pending returning bucket").fetchall()
        return _recompute(conn, {r[0] for r in rows})
