"""The one owner of a service's PostgreSQL connections: a small psycopg 3 pool, created once by the
service's composition root and passed down (its threads check connections out, never connect alone).

    db = Database(config.database_url, name="ingest-1")     # opens in the background: no wait, no raise
    with db.connection() as conn:                           # committed at exit, rolled back on error
        ...
    db.close()

A connection that broke (database restart, cut) is discarded by the pool and replaced; the caller's
`psycopg.Error` is its cue to retry later, as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

CONNECT_TIMEOUT_S = 5
CHECKOUT_TIMEOUT_S = 10.0


class Database:
    def __init__(self, dsn: str, *, name: str = "microfleet", min_size: int = 1, max_size: int = 4) -> None:
        self.dsn = dsn
        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            name=name,
            open=False,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
            check=ConnectionPool.check_connection,
        )
        self.pool.open(wait=False)

    @contextlib.contextmanager
    def connection(
        self, *, autocommit: bool = False, timeout_s: float = CHECKOUT_TIMEOUT_S
    ) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; on exit the pool commits (or rolls back on an exception) and takes it back.
        Raises psycopg.Error (PoolTimeout is one) when the database cannot be reached in time."""
        with self.pool.connection(timeout=timeout_s) as conn:
            if conn.autocommit != autocommit:
                conn.autocommit = autocommit
            yield conn

    def close(self, timeout_s: float = 5.0) -> None:
        self.pool.close(timeout=timeout_s)

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
