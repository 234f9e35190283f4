"""Write one Batch per transaction, idempotently, with psycopg 3 binary COPY.

Strategies (measured by bench/ingest.py, see docs/performance.md):
- ``copy`` (default): samples, device_events and uplink_log are COPied straight into their tables; their
  primary keys (the natural keys) make a redelivered row fail the transaction with a unique violation,
  and the batch is then written again with ``stage``. Redeliveries are rare (a consumer or broker
  restart), so the common path is one COPY per table.
- ``stage``: COPY into a TEMP staging table (ON COMMIT DELETE ROWS, created once per connection), then
  ``INSERT INTO t SELECT ... FROM stage ON CONFLICT DO NOTHING``.
Sessions and devices are always merged with an upsert from their staging table, quarantine with
ON CONFLICT (topic, payload_sha256) DO NOTHING. Everything of a batch commits together or not at all.

Errors: a lost or refused connection is transient: roll back, back off (capped exponential, full
jitter), reconnect and write the same batch again, for as long as it takes (the caller acks nothing
before commit). A row the database refuses (SQLSTATE class 22/23, e.g. a level that does not fit a
smallint) is permanent: the batch's messages are then written one by one, each in a savepoint, and
the refused ones go to quarantine (reason out_of_range, the database's message as detail).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import errors as pgerrors

from cloud.ingest.batcher import Batch, Batcher
from cloud.ingest.rows import Row
from cloud.ingest.tables import (
    ALL_TABLES,
    APPEND_TABLES,
    DEVICES,
    OTA_JOB_MERGE,
    OTA_REPORTS,
    QUARANTINE,
    SESSIONS,
    Table,
)
from contract.errors import Reason

log = logging.getLogger(__name__)

Strategy = Literal["copy", "stage"]
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 5.0


@dataclass(frozen=True, slots=True)
class WriteResult:
    messages: int
    samples: int
    quarantined: int
    commit_s: float  # wall time of the transaction, COPY to COMMIT
    attempts: int


class TransientError(Exception):
    """The database could not be reached or lost the connection; retrying the same batch will help."""


# errors of the data, not of the database: a row the server refuses, or a value the COPY dumper cannot pack
_DATA_ERRORS = (psycopg.DataError, psycopg.IntegrityError, OverflowError, ValueError, TypeError)


def _permanent(exc: BaseException) -> bool:
    return isinstance(exc, _DATA_ERRORS) and not isinstance(exc, pgerrors.UniqueViolation)


class BatchWriter:
    def __init__(
        self,
        dsn: str,
        *,
        consumer: str = "",
        strategy: Strategy = "copy",
        isolate: Callable[[str, bytes], Batch[Any]] | None = None,
        connect_timeout_s: int = 5,
    ) -> None:
        self.dsn = dsn
        self.consumer = consumer
        self.strategy: Strategy = strategy
        self._isolate = isolate
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection[Any] | None = None
        self.failures = 0  # failed attempts since start (transient errors)

    # -- connection -------------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self.dsn,
                connect_timeout=self._connect_timeout_s,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=3,
                keepalives_count=3,
                application_name="microfleet-ingest",
            )
            with conn.transaction():
                for table in ALL_TABLES:
                    conn.execute(table.create_stage)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- one attempt --------------------------------------------------------------------------------
    @staticmethod
    def _copy(cur: psycopg.Cursor[Any], table: Table, target: str, rows: Sequence[Row]) -> None:
        if not rows:
            return
        with cur.copy(table.copy_into(target)) as copy:
            copy.set_types(list(table.types))
            for row in rows:
                copy.write_row(row)

    def _write_rows(self, cur: psycopg.Cursor[Any], batch: Batch[Any], strategy: Strategy) -> None:
        for table, rows in zip(APPEND_TABLES, (batch.samples, batch.events, batch.uplink_log), strict=True):
            if strategy == "copy":
                self._copy(cur, table, table.name, rows)
            elif rows:
                self._copy(cur, table, table.stage, rows)
                cur.execute(table.merge)
        for table, rows in (
            (SESSIONS, batch.sessions),
            (DEVICES, batch.devices),
            (QUARANTINE, batch.quarantine),
            (OTA_REPORTS, batch.ota_reports),
        ):
            if rows:
                self._copy(cur, table, table.stage, rows)
                cur.execute(table.merge)
        if batch.ota_reports:
            cur.execute(OTA_JOB_MERGE)  # reads the staged reports: the newest state of each job
        if strategy == "stage" or batch.sessions or batch.devices or batch.quarantine or batch.ota_reports:
            # staging tables are emptied at COMMIT; empty them now too, in case of a savepoint retry
            for table in ALL_TABLES:
                cur.execute(f"DELETE FROM {table.stage}")

    def _isolated(self, cur: psycopg.Cursor[Any], batch: Batch[Any]) -> int:
        """Write the batch message by message; quarantine those the database refuses. Returns how many."""
        assert self._isolate is not None
        refused: Batcher[None] = Batcher(consumer=self.consumer)
        for topic, payload in batch.raw:
            single = self._isolate(topic, payload)
            try:
                with cur.connection.transaction():
                    self._write_rows(cur, single, "stage")
            except (psycopg.Error, *_DATA_ERRORS) as exc:
                if not _permanent(exc):
                    raise
                refused.add_quarantine(topic, payload, Reason.OUT_OF_RANGE, f"the database refused it: {exc}")
        rejected = refused.take().quarantine
        self._write_rows(cur, Batch(quarantine=batch.quarantine + rejected), "stage")
        return len(rejected)

    def write_once(self, batch: Batch[Any]) -> WriteResult:
        """One attempt: returns after COMMIT, raises TransientError (nothing committed) otherwise."""
        t0 = time.perf_counter()
        refused = 0
        try:
            conn = self._connection()
            cur = conn.cursor()
            try:
                with conn.transaction():
                    self._write_rows(cur, batch, self.strategy)
            except pgerrors.UniqueViolation:
                # a redelivered row: write the batch again, skipping the rows that are already there
                with conn.transaction():
                    self._write_rows(cur, batch, "stage")
        except (psycopg.Error, *_DATA_ERRORS) as exc:
            if not _permanent(exc) or self._isolate is None:
                self.close()
                raise TransientError(f"{type(exc).__name__}: {exc}") from exc
            log.warning(
                "the database refused a row (%s); isolating the batch's %d messages", exc, len(batch.raw)
            )
            conn = self._connection()
            with conn.transaction():
                refused = self._isolated(conn.cursor(), batch)
        return WriteResult(
            messages=batch.messages,
            samples=len(batch.samples),
            quarantined=len(batch.quarantine) + refused,
            commit_s=time.perf_counter() - t0,
            attempts=1,
        )

    def write(self, batch: Batch[Any], stop: threading.Event | None = None) -> WriteResult | None:
        """Write until committed. Returns None only if `stop` was set while the database was unreachable
        (nothing committed: the caller must not acknowledge the batch)."""
        attempt = 0
        delay = BACKOFF_MIN_S
        while True:
            attempt += 1
            try:
                result = self.write_once(batch)
            except (TransientError, psycopg.Error, OSError) as exc:
                self.close()
                self.failures += 1
                pause = random.uniform(0, delay)
                log.warning(
                    "batch of %d messages not written (%s); retry %d in %.2fs",
                    batch.messages,
                    exc,
                    attempt,
                    pause,
                )
                if stop is not None and stop.wait(pause):
                    return None
                if stop is None:
                    time.sleep(pause)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if attempt > 1:
                log.info("batch of %d messages committed after %d attempts", batch.messages, attempt)
            return WriteResult(result.messages, result.samples, result.quarantined, result.commit_s, attempt)
