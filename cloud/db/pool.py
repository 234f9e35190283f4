"""Connections: `connect(dsn)` for jobs and the CLI, `async_pool(dsn)` for services (opened in a lifespan),
`ensure_database(dsn)` to create the database named in the DSN."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import conninfo, sql
from psycopg_pool import AsyncConnectionPool

CONNECT_TIMEOUT_S = 5


class DatabaseUnreachable(Exception):
    """PostgreSQL does not answer at this DSN; the message says what to do next."""


def describe(dsn: str) -> str:
    """host:port/dbname of a DSN, without its password."""
    info = conninfo.conninfo_to_dict(dsn)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def _unreachable(dsn: str, exc: Exception) -> DatabaseUnreachable:
    return DatabaseUnreachable(
        f"cannot connect to PostgreSQL at {describe(dsn)}: {str(exc).strip()}\n"
        "Start PostgreSQL (or TimescaleDB), or point MICROFLEET_DATABASE_URL at a running server, e.g. "
        "postgresql://postgres@127.0.0.1:5432/microfleet"
    )


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A connection, or DatabaseUnreachable with advice."""
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        raise _unreachable(dsn, exc) from exc


def ensure_database(dsn: str, *, maintenance_db: str = "postgres") -> bool:
    """Create the database named in `dsn` if it does not exist (connecting to `maintenance_db` for that).
    Returns True if it was created."""
    info = conninfo.conninfo_to_dict(dsn)
    name = str(info.get("dbname") or "")
    try:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S):
            return False
    except psycopg.OperationalError as exc:
        if not name or "does not exist" not in str(exc):
            raise _unreachable(dsn, exc) from exc
    admin = conninfo.make_conninfo(dsn, dbname=maintenance_db)
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            try:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                return False  # created meanwhile by someone else
    except psycopg.OperationalError as exc:
        raise _unreachable(admin, exc) from exc
    return True


def async_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 8, name: str = "microfleet"
) -> AsyncConnectionPool:
    """An AsyncConnectionPool, not opened yet: `await pool.open()` in the service's lifespan, or use
    `async with async_pool(dsn) as pool:`."""
    return AsyncConnectionPool(dsn, min_size=min_size, max_size=max_size, name=name, open=False)
