"""Versioned SQL migrations: `migrate(dsn)` applies the pending files of `migrations/` in name order.

File names (see migrations/README.md):
  NNNN_name.sql             shared by both storage paths
  NNNN_name.timescale.sql   TimescaleDB path only } a version has either one shared file
  NNNN_name.plain.sql       plain PostgreSQL path } or both variants
Each migration runs in its own transaction and is recorded in `schema_migrations` with its checksum;
a session advisory lock serialises concurrent runs, so running migrate twice, or from two processes
at once, applies every migration exactly once.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import psycopg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# pg_advisory_lock key: any constant shared by every microfleet process ("mfmigr" in ASCII)
LOCK_KEY = 0x6D666D69677200
_NAME = re.compile(r"^(?P<version>\d{4}_[a-z0-9_]+?)(?:\.(?P<variant>timescale|plain))?\.sql$")


class StoragePath(StrEnum):
    TIMESCALE = "timescale"
    PLAIN = "plain"


class MigrationError(Exception):
    """A migration could not be loaded or applied; the message says what to do next."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    sql: str
    filename: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MigrateResult:
    path: StoragePath
    applied: list[str]
    already: list[str]


def parse_name(filename: str) -> tuple[str, StoragePath | None]:
    m = _NAME.match(filename)
    if m is None:
        raise MigrationError(
            f"{filename}: migration files are named NNNN_name.sql, NNNN_name.timescale.sql or "
            "NNNN_name.plain.sql (lower case, digits and underscores); rename it"
        )
    variant = m["variant"]
    return m["version"], StoragePath(variant) if variant else None


def select_migrations(files: Mapping[str, str], path: StoragePath) -> list[Migration]:
    """Pure: from {filename: sql}, the migrations of `path` in version (name) order."""
    by_version: dict[str, dict[StoragePath | None, tuple[str, str]]] = {}
    for filename, sql in files.items():
        version, variant = parse_name(filename)
        by_version.setdefault(version, {})[variant] = (filename, sql)
    chosen: list[Migration] = []
    for version in sorted(by_version):
        variants = by_version[version]
        if None in variants and len(variants) > 1:
            raise MigrationError(
                f"{version}: has both a shared file and path variants; keep one or the other"
            )
        if None not in variants and len(variants) != 2:
            have = ", ".join(f for f, _ in variants.values())
            raise MigrationError(
                f"{version}: only {have}; a path-specific migration needs both a .timescale.sql and a "
                ".plain.sql file (an empty one with a comment is fine)"
            )
        filename, sql = variants[None] if None in variants else variants[path]
        chosen.append(Migration(version, sql, filename))
    return chosen


def plan(migrations: Iterable[Migration], applied: Mapping[str, str]) -> list[Migration]:
    """Pure: the migrations not yet applied; refuses if an applied one was edited since."""
    pending = []
    for m in migrations:
        checksum = applied.get(m.version)
        if checksum is None:
            pending.append(m)
        elif checksum != m.checksum:
            raise MigrationError(
                f"{m.filename} was changed after it was applied to this database; never edit an applied "
                "migration, add a new one (on a throw-away development database: drop and recreate it)"
            )
    return pending


def read_files(directory: Path = MIGRATIONS_DIR) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.glob("*.sql"))}


_BOOKKEEPING = b"""
create table if not exists schema_migrations (
    version    text primary key,
    path       text not null,
    checksum   text not null,
    filename   text not null,
    applied_at timestamptz not null default now()
)
"""


def current_path(conn: psycopg.Connection[Any]) -> StoragePath | None:
    """The storage path recorded by `migrate` in this database (None: not migrated yet)."""
    if conn.execute("select to_regclass('schema_migrations')").fetchone() in (None, (None,)):
        return None
    row = conn.execute("select path from schema_migrations limit 1").fetchone()
    return None if row is None else StoragePath(str(row[0]))


def detect_path(conn: psycopg.Connection[Any]) -> StoragePath:
    """The path this database already uses, else TimescaleDB when the extension is available."""
    recorded = current_path(conn)
    if recorded is not None:
        return recorded
    row = conn.execute("select count(*) from pg_available_extensions where name = 'timescaledb'").fetchone()
    return StoragePath.TIMESCALE if row and int(str(row[0])) else StoragePath.PLAIN


def applied_versions(conn: psycopg.Connection[Any]) -> dict[str, str]:
    rows = conn.execute("select version, checksum from schema_migrations order by version").fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def run_migrations(
    conn: psycopg.Connection[Any],
    *,
    path: StoragePath | None = None,
    directory: Path = MIGRATIONS_DIR,
) -> MigrateResult:
    """Apply the pending migrations on an autocommit connection (holds the advisory lock meanwhile)."""
    if not conn.autocommit:
        raise MigrationError(
            "run_migrations needs an autocommit connection (each migration is its own transaction)"
        )
    files = read_files(directory)
    conn.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        conn.execute(_BOOKKEEPING)
        current = detect_path(conn)
        if path is not None and path is not current and applied_versions(conn):
            raise MigrationError(f"this database already uses the {current} path; it cannot switch to {path}")
        chosen = path or current
        migrations = select_migrations(files, chosen)
        done = applied_versions(conn)
        pending = plan(migrations, done)
        applied: list[str] = []
        for m in pending:
            log.info("applying migration %s (%s path)", m.filename, chosen)
            try:
                with conn.transaction():
                    conn.execute(m.sql.encode())
                    conn.execute(
                        "insert into schema_migrations (version, path, checksum, filename) values (%s, %s, %s, %s)",
                        (m.version, str(chosen), m.checksum, m.filename),
                    )
            except psycopg.Error as exc:
                hint = ""
                if chosen is StoragePath.TIMESCALE and "timescaledb" in str(exc).lower():
                    hint = (
                        " (is timescaledb in shared_preload_libraries? or migrate a new database with "
                        "--path plain)"
                    )
                raise MigrationError(f"migration {m.filename} failed: {exc}{hint}") from exc
            applied.append(m.version)
        return MigrateResult(chosen, applied, [v for v in done if v in {m.version for m in migrations}])
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("select pg_advisory_unlock(%s)", (LOCK_KEY,))


def migrate(dsn: str, *, path: StoragePath | None = None, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations to the database at `dsn`; returns the versions applied now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return run_migrations(conn, path=path, directory=directory).applied
