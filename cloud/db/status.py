"""What `microfleet db status` shows: applied migrations, the storage path, partitions or chunks, rows.

Rows are counted exactly for small relations (under EXACT_BELOW_BYTES with their partitions) and for
relations the planner has no estimate of yet (never analysed: a fresh database); big analysed relations
get the planner's fast estimate, labelled as such (`exact=False`). `--exact` counts every one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from cloud.db.migrate import StoragePath, current_path
from cloud.db.rollups import fresh_as_of

TIME_SERIES = ("samples", "sessions", "device_events", "uplink_log")
OTHERS = (
    "devices",
    "quarantine",
    "usage_device_hourly",
    "usage_device_daily",
    "usage_fleet_hourly",
    "usage_fleet_daily",
)


EXACT_BELOW_BYTES = 64 * 1024 * 1024  # a count(*) over this much takes well under a second


@dataclass(frozen=True, slots=True)
class RelationStatus:
    relation: str
    rows: int
    exact: bool  # False: the planner's estimate (big relations)
    parts: int | None  # partitions (plain, DEFAULT included) or chunks (TimescaleDB); None: not split
    compressed: int | None = None  # TimescaleDB: compressed chunks


@dataclass(frozen=True, slots=True)
class DbStatus:
    path: StoragePath | None
    migrations: list[tuple[str, datetime]]
    relations: list[RelationStatus]
    usage_fresh_as_of: datetime | None = None  # the rollups hold every sample stored before this


def _count(conn: psycopg.Connection[Any], relation: str) -> int:
    row = conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(relation))).fetchone()
    return 0 if row is None else int(row[0])


def _size(conn: psycopg.Connection[Any], relation: str, path: StoragePath) -> int:
    if path is StoragePath.TIMESCALE and relation in TIME_SERIES:
        row = conn.execute("select hypertable_size(%s::regclass)", (relation,)).fetchone()
    else:  # the relation and its partitions
        row = conn.execute(
            """select sum(pg_total_relation_size(c.oid))::bigint from pg_class c where c.oid = %s::regclass
                  or c.oid in (select inhrelid from pg_inherits where inhparent = %s::regclass)""",
            (relation, relation),
        ).fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def _estimate(conn: psycopg.Connection[Any], relation: str, path: StoragePath) -> int | None:
    """The planner's estimate; None when it has none (never analysed)."""
    if path is StoragePath.TIMESCALE and relation in TIME_SERIES:
        row = conn.execute("select approximate_row_count(%s::regclass)", (relation,)).fetchone()
        return None if row is None or row[0] is None or int(row[0]) <= 0 else int(row[0])
    row = conn.execute(  # sum over the relation and its partitions (-1: never analysed)
        """select case when bool_or(c.reltuples < 0) then null else sum(c.reltuples)::bigint end
           from pg_class c where c.oid = %s::regclass
              or c.oid in (select inhrelid from pg_inherits where inhparent = %s::regclass)""",
        (relation, relation),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _rows(
    conn: psycopg.Connection[Any], relation: str, exact: bool, path: StoragePath, exact_below: int
) -> tuple[int, bool]:
    """(rows, exact): counted when asked, when small, or when the planner has no estimate."""
    if not exact and _size(conn, relation, path) >= exact_below:
        estimate = _estimate(conn, relation, path)
        if estimate is not None:
            return estimate, False
    return _count(conn, relation), True


def collect(
    conn: psycopg.Connection[Any], *, exact: bool = False, exact_below: int = EXACT_BELOW_BYTES
) -> DbStatus:
    path = current_path(conn)
    if path is None:
        return DbStatus(None, [], [])
    migrations = [
        (str(v), t)
        for v, t in conn.execute("select version, applied_at from schema_migrations order by version")
    ]
    relations = []
    for rel in (*TIME_SERIES, *OTHERS):
        if conn.execute("select to_regclass(%s)", (rel,)).fetchone() in (None, (None,)):
            continue
        parts: int | None = None
        compressed: int | None = None
        if rel in TIME_SERIES and path is StoragePath.TIMESCALE:
            row = conn.execute(
                """select count(*), count(*) filter (where is_compressed)
                   from timescaledb_information.chunks where hypertable_name = %s""",
                (rel,),
            ).fetchone()
            parts, compressed = (int(row[0]), int(row[1])) if row else (0, 0)
        elif rel in TIME_SERIES:
            row = conn.execute(
                "select count(*) from pg_inherits where inhparent = %s::regclass", (rel,)
            ).fetchone()
            parts = int(row[0]) if row else 0
        rows, counted = _rows(conn, rel, exact, path, exact_below)
        relations.append(RelationStatus(rel, rows, counted, parts, compressed))
    fresh = fresh_as_of(conn) if any(v == "0007_usage_freshness" for v, _ in migrations) else None
    return DbStatus(path, migrations, relations, fresh)


def as_json(st: DbStatus) -> dict[str, Any]:
    """The status as a JSON-ready dict (times in ISO 8601)."""
    return {
        "path": None if st.path is None else str(st.path),
        "usage_fresh_as_of": None if st.usage_fresh_as_of is None else st.usage_fresh_as_of.isoformat(),
        "migrations": [{"version": v, "applied_at": at.isoformat()} for v, at in st.migrations],
        "relations": [
            {
                "relation": r.relation,
                "rows": r.rows,
                "exact": r.exact,
                "parts": r.parts,
                "compressed": r.compressed,
            }
            for r in st.relations
        ],
    }
