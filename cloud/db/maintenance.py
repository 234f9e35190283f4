"""Partition maintenance (plain PostgreSQL path) and the periodic job that also refreshes rollups.

`maintain(conn, now)` runs the `microfleet_maintain` SQL function (0002_timeseries.plain.sql): it creates
the partitions covering [now - behind, now + ahead] (moving rows that waited in the DEFAULT partition),
drops partitions wholly older than storage_policy.retention and deletes expired rows elsewhere. On
TimescaleDB, chunks, compression and retention are TimescaleDB's own policies: maintain does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from cloud.db.migrate import StoragePath, current_path
from cloud.db.rollups import RefreshReport, refresh_pending_rollups

AHEAD = timedelta(days=7)
BEHIND = timedelta(days=14)  # the late horizon: late rows find their partition without a DEFAULT detour


@dataclass(frozen=True, slots=True)
class PartitionChange:
    action: str  # created | dropped | deleted
    relation: str
    partition: str
    rows: int | None  # created: rows moved in from DEFAULT; deleted: rows deleted


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    path: StoragePath
    changes: list[PartitionChange]
    rollups: RefreshReport


def maintain(
    conn: psycopg.Connection[Any], now: datetime, *, ahead: timedelta = AHEAD, behind: timedelta = BEHIND
) -> list[PartitionChange]:
    """Create partitions ahead, drop expired ones (plain path; a no-op on TimescaleDB). Idempotent."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware UTC datetime")
    path = current_path(conn)
    if path is None:
        raise RuntimeError("this database has no microfleet schema yet: run `microfleet db migrate` first")
    if path is StoragePath.TIMESCALE:
        return []
    with conn.transaction():
        rows = conn.execute("select * from microfleet_maintain(%s, %s, %s)", (now, ahead, behind)).fetchall()
    return [PartitionChange(str(a), str(r), str(p), None if n is None else int(n)) for a, r, p, n in rows]


def run_once(conn: psycopg.Connection[Any], now: datetime) -> MaintenanceReport:
    """One pass of the periodic job: partition maintenance, then the pending rollups."""
    changes = maintain(conn, now)
    path = current_path(conn)
    assert path is not None  # maintain raised otherwise
    return MaintenanceReport(path, changes, refresh_pending_rollups(conn))
