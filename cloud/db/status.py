"""What `microfleet db status` shows: applied migrations, the storage path, partitions or chunks, rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from cloud.db.migrate import StoragePath, current_path

TIME_SERIES = ("samples", "sessions", "device_events", "uplink_log")
OTHERS = (
    "devices",
    "quarantine",
    "usage_device_hourly",
    "usage_device_daily",
    "usage_fleet_hourly",
    "usage_fleet_daily",
)


@dataclass(frozen=True, slots=True)
class RelationStatus:
    relation: str
    rows: int | None  # exact count, or an estimate (None: unknown) when exact=False
    parts: int | None  # partitions (plain, DEFAULT included) or chunks (TimescaleDB); None: not split
    compressed: int | None = None  # TimescaleDB: compressed chunks


@dataclass(frozen=True, slots=True)
class DbStatus:
    path: StoragePath | None
    migrations: list[tuple[str, datetime]]
    relations: list[RelationStatus]


def _rows(conn: psycopg.Connection[Any], relation: str, exact: bool, path: StoragePath) -> int | None:
    if exact:
        row = conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(relation))).fetchone()
    elif path is StoragePath.TIMESCALE and relation in TIME_SERIES:
        row = conn.execute("select approximate_row_count(%s::regclass)", (relation,)).fetchone()
    else:  # sum the planner's estimates over the relation and its partitions (-1: never analysed)
        row = conn.execute(
            """select case when bool_or(c.reltuples < 0) then null else sum(c.reltuples)::bigint end
               from pg_class c where c.oid = %s::regclass
                  or c.oid in (select inhrelid from pg_inherits where inhparent = %s::regclass)""",
            (relation, relation),
        ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def collect(conn: psycopg.Connection[Any], *, exact: bool = False) -> DbStatus:
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
        relations.append(RelationStatus(rel, _rows(conn, rel, exact, path), parts, compressed))
    return DbStatus(path, migrations, relations)
