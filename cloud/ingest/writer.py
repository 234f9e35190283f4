"""Write one Batch per transaction, idempotently, with psycopg 3 binary COPY.

Strategies (measured by bench/ingest.py, see docs/performance.md):
- ``copy`` (default): samples, device_events and uplink_log are COPied straight into their tables; their
  primary keys (the natural keys) make a redelivered row fail the transaction with a unique violation,
  and the batch is then written again with ``stage``. Redeliveries are rare (a consumer or broker
  restart), so the common path is one COPY per table.
- ``stage``: COPY into a TEMP staging table (ON COMMIT DELETE ROWS, created once per connection), then
  ``INSERT INTO t SELECT ... FROM stage ON CONFLICT DO NOTHING``.
Sessions and devices are always merged with an upsert from their staging table, quarantine with
ON CONFLICT (topic, payload_sha256) DO NOTHING. With ``marks=True`` (the default) the same transaction
records the batch's receipts and syncs and moves the devices' commit marks (marks.py). Everything of a
batch commits together or not at all.

Errors (classify): a lost or refused connection, a deadlock or serialization failure, a server short of
resources or shutting down, a read-only server (a failover) are transient: roll back, back off (capped
exponential, full jitter), reconnect and write the same batch again, for as long as it takes (the caller
acks nothing before commit). ANY other error of the database or of the row dumpers (DataError,
IntegrityError other than a redelivery's unique violation, ProgrammingError, InternalError, ValueError,
TypeError, OverflowError, UnicodeEncodeError ...) is the data's: the accepted messages are split in halves,
each half written in a savepoint, until every refused message is isolated; those go to quarantine (reason
out_of_range, the database's message as detail) and the rest commits. Quarantine rows are cleaned
(rows.quarantine_row) and, should one still be refused, stored as a minimal ASCII row with the payload.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import errors as pgerrors

from cloud.ingest import marks as commit_marks
from cloud.ingest.batcher import Batch, Batcher
from cloud.ingest.rows import MAX_DETAIL_CHARS, MAX_TOPIC_CHARS, Row, ascii_text, quarantine_row
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
from contract.messages import UplinkMessage

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
    # (topic, payload) of the accepted messages the database refused: quarantined as out_of_range
    refused: tuple[tuple[str, bytes], ...] = ()
    marks_advanced: int = 0  # devices whose commit mark moved up in this transaction
    syncs: int = 0


class TransientError(Exception):
    """The database could not be reached or lost the connection; retrying the same batch will help."""


# SQLSTATE classes of a database that cannot take the batch now, whatever the batch: connection (08),
# transaction rollback: deadlock, serialization (40), insufficient resources (53), operator intervention:
# shutdown, cancel (57), system error (58); and a read-only server (25006, a failover in progress).
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_STATES = frozenset({"25006"})
# errors of the data: a row the server refuses, or a value the COPY dumper cannot pack
_DATA_ERRORS = (psycopg.Error, ValueError, TypeError, ArithmeticError, LookupError)


def is_transient(exc: BaseException) -> bool:
    """True for a failure of the connection or the server, that retrying the same batch can cure."""
    if isinstance(exc, OSError | psycopg.InterfaceError | TransientError):
        return True
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:  # raised by the client: a lost connection, or a value it could not dump
            return isinstance(exc, psycopg.OperationalError)
        return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES
    return False


def _permanent(exc: BaseException) -> bool:
    """An error of the batch's data: split the batch (never retry it as is)."""
    return isinstance(exc, _DATA_ERRORS) and not is_transient(exc)


Accepted = tuple[str, bytes, UplinkMessage]


class BatchWriter:
    def __init__(
        self,
        dsn: str,
        *,
        consumer: str = "",
        strategy: Strategy = "copy",
        connect_timeout_s: int = 5,
        marks: bool = True,
    ) -> None:
        """`marks`: record receipts and move commit marks in each batch's transaction (the end-to-end
        acknowledgement; False only to measure its cost, or for devices that delete on PUBACK)."""
        self.dsn = dsn
        self.consumer = consumer
        self.strategy: Strategy = strategy
        self.marks = marks
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection[Any] | None = None
        self.failures = 0  # failed attempts since start (transient errors)

    # -- connection -------------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
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

    def _merge(self, cur: psycopg.Cursor[Any], table: Table, rows: Sequence[Row], reuse: bool) -> None:
        self._copy(cur, table, table.stage, rows)
        cur.execute(table.merge)
        if table is OTA_REPORTS:
            cur.execute(OTA_JOB_MERGE)  # reads the staged reports: the newest state of each job
        if reuse:  # more merges follow in this transaction: the stage is emptied at COMMIT only
            cur.execute(f"DELETE FROM {table.stage}")

    def _write_rows(
        self, cur: psycopg.Cursor[Any], batch: Batch[Any], strategy: Strategy, *, reuse: bool = False
    ) -> None:
        """The batch's rows, quarantine apart (see _store_quarantine)."""
        for table, rows in zip(APPEND_TABLES, (batch.samples, batch.events, batch.uplink_log), strict=True):
            if strategy == "copy":
                self._copy(cur, table, table.name, rows)
            elif rows:
                self._merge(cur, table, rows, reuse)
        for table, rows in (
            (SESSIONS, batch.sessions),
            (DEVICES, batch.devices),
            (OTA_REPORTS, batch.ota_reports),
        ):
            if rows:
                self._merge(cur, table, rows, reuse)

    def _store_quarantine(self, cur: psycopg.Cursor[Any], rows: Sequence[Row], *, safe: bool) -> None:
        """Quarantine rows: all at once; with `safe`, a refused set is stored row by row, and a refused row
        as a minimal ASCII row with its payload (which bytea always takes)."""
        if not rows:
            return
        if not safe:
            self._merge(cur, QUARANTINE, rows, reuse=False)
            return
        try:
            with cur.connection.transaction():
                self._merge(cur, QUARANTINE, rows, reuse=True)
            return
        except _DATA_ERRORS as exc:
            if not _permanent(exc):
                raise
        for row in rows:
            try:
                with cur.connection.transaction():
                    self._merge(cur, QUARANTINE, [row], reuse=True)
            except _DATA_ERRORS as exc:
                if not _permanent(exc):
                    raise
                topic, payload, digest, reason, detail, consumer = row
                minimal = (
                    ascii_text(str(topic), MAX_TOPIC_CHARS),
                    bytes(payload),
                    digest,
                    ascii_text(str(reason), 100),
                    ascii_text(f"{detail} (stored in ASCII: {exc})", MAX_DETAIL_CHARS),
                    ascii_text(str(consumer), 200),
                )
                with cur.connection.transaction():
                    cur.execute(
                        "INSERT INTO quarantine (topic, payload, payload_sha256, reason, detail, consumer) "
                        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (topic, payload_sha256) DO NOTHING",
                        minimal,
                    )

    def _rebatch(self, items: Sequence[Accepted]) -> Batch[Any]:
        b: Batcher[None] = Batcher(consumer=self.consumer, max_messages=max(1, len(items)))
        for topic, payload, message in items:
            b.add_decoded(topic, payload, message)
        return b.take()

    def _split(self, cur: psycopg.Cursor[Any], items: Sequence[Accepted]) -> list[tuple[str, bytes, str]]:
        """Write `items` in savepoints, halving what the database refuses until each refused message is
        alone; returns (topic, payload, why) of the refused ones."""
        if not items:
            return []
        try:
            with cur.connection.transaction():
                self._write_rows(cur, self._rebatch(items), "stage", reuse=True)
            return []
        except _DATA_ERRORS as exc:
            if not _permanent(exc):
                raise
            if len(items) == 1:
                topic, payload, _ = items[0]
                return [(topic, payload, f"the database refused it: {type(exc).__name__}: {exc}")]
        mid = len(items) // 2
        return self._split(cur, items[:mid]) + self._split(cur, items[mid:])

    def _finish(self, cur: psycopg.Cursor[Any], batch: Batch[Any]) -> commit_marks.Advance | None:
        return commit_marks.advance(cur, batch.receipts, batch.syncs) if self.marks else None

    def _attempt(
        self, conn: psycopg.Connection[Any], batch: Batch[Any]
    ) -> tuple[list[tuple[str, bytes, str]], Any]:
        cur = conn.cursor()
        first: BaseException | None = None
        for strategy in (self.strategy, "stage") if self.strategy == "copy" else ("stage",):
            try:
                with conn.transaction():
                    self._write_rows(cur, batch, strategy)
                    self._store_quarantine(cur, batch.quarantine, safe=False)
                    return [], self._finish(cur, batch)
            except pgerrors.UniqueViolation as exc:
                first = exc  # a redelivered row: write the batch again, skipping the rows already there
                continue
            except _DATA_ERRORS as exc:
                if not _permanent(exc) or conn.broken:
                    raise
                first = exc
                break
        log.warning(
            "the database refused the batch (%s: %s); splitting its %d messages",
            type(first).__name__,
            str(first)[:300],
            len(batch.accepted),
        )
        with conn.transaction():
            refused = self._split(cur, batch.accepted)
            rows = [quarantine_row(t, p, Reason.OUT_OF_RANGE, why, self.consumer) for t, p, why in refused]
            self._store_quarantine(cur, batch.quarantine + rows, safe=True)
            return refused, self._finish(cur, batch)

    def write_once(self, batch: Batch[Any]) -> WriteResult:
        """One attempt: returns after COMMIT, raises TransientError (nothing committed) otherwise."""
        t0 = time.perf_counter()
        try:
            conn = self._connection()
            refused, adv = self._attempt(conn, batch)
        except Exception as exc:
            if is_transient(exc) or (self._conn is not None and self._conn.broken):
                self.close()
                raise TransientError(f"{type(exc).__name__}: {exc}") from exc
            raise
        for topic, _, why in refused:
            log.warning("quarantined a message on %s the database refused: %s", topic[:200], why[:300])
        return WriteResult(
            messages=batch.messages,
            samples=len(batch.samples),
            quarantined=len(batch.quarantine) + len(refused),
            commit_s=time.perf_counter() - t0,
            attempts=1,
            refused=tuple((t, p) for t, p, _ in refused),
            marks_advanced=0 if adv is None else adv.advanced,
            syncs=len(batch.syncs),
        )

    def write(self, batch: Batch[Any], stop: threading.Event | None = None) -> WriteResult | None:
        """Write until committed. Returns None only if `stop` was set while the database was unreachable
        (nothing committed: the caller must not acknowledge the batch). An error that is neither transient
        nor the data's (a bug) is raised."""
        attempt = 0
        delay = BACKOFF_MIN_S
        while True:
            attempt += 1
            try:
                result = self.write_once(batch)
            except TransientError as exc:
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
            return dataclasses.replace(result, attempts=attempt)
