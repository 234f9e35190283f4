"""The quarantine's life after ingest: list what is there, replay it with today's code.

A message ingest cannot store goes to `quarantine` with its raw bytes and a reason (batcher.py, writer.py);
it is committed there (it has a receipt: the device may forget it). After a fix (a decoder that accepts it,
a longer late horizon), `replay` decodes each selected row again with today's code and late horizon and
writes what now decodes through the same BatchWriter (idempotent: natural keys; receipts and commit marks
too), then records on the row when it was replayed and how it went: `replay_result` is 'stored', 'skipped'
(a SyncRequest: a request of its moment, never replayed) or the reason it still fails with
(`replay_detail` says why). Rows already stored are not replayed again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from cloud.ingest.batcher import Batcher
from cloud.ingest.writer import BatchWriter
from contract.errors import Reason

REPLAY_CONSUMER = "quarantine-replay"
STORED = "stored"
SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which quarantine rows: every given criterion must hold."""

    reason: str | None = None
    device: str | None = None
    since: datetime | None = None
    ids: tuple[int, ...] = ()

    def where(self, *, pending_only: bool = False) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.reason is not None:
            clauses.append("reason = %s")
            params.append(self.reason)
        if self.device is not None:
            clauses.append("split_part(topic, '/', 3) = %s")
            params.append(self.device)
        if self.since is not None:
            clauses.append("received_at >= %s")
            params.append(self.since)
        if self.ids:
            clauses.append("id = ANY(%s)")
            params.append(list(self.ids))
        if pending_only:
            clauses.append("replay_result IS DISTINCT FROM 'stored'")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


@dataclass(frozen=True, slots=True)
class QuarantinedRow:
    id: int
    received_at: datetime
    topic: str
    reason: str
    detail: str
    consumer: str
    size: int
    replayed_at: datetime | None
    replay_result: str | None
    replay_detail: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": self.received_at.isoformat(),
            "topic": self.topic,
            "reason": self.reason,
            "detail": self.detail,
            "consumer": self.consumer,
            "size": self.size,
            "replayed_at": None if self.replayed_at is None else self.replayed_at.isoformat(),
            "replay_result": self.replay_result,
            "replay_detail": self.replay_detail,
        }


def list_rows(
    conn: psycopg.Connection[Any], selection: Selection, *, limit: int = 100
) -> list[QuarantinedRow]:
    """The newest matching rows first."""
    where, params = selection.where()
    found = conn.execute(
        "SELECT id, received_at, topic, reason, coalesce(detail, ''), coalesce(consumer, ''), "
        f"octet_length(payload), replayed_at, replay_result, replay_detail FROM quarantine{where} "
        "ORDER BY id DESC LIMIT %s",
        [*params, limit],
    ).fetchall()
    return [QuarantinedRow(*r) for r in found]


def count(conn: psycopg.Connection[Any], selection: Selection, *, pending_only: bool = False) -> int:
    where, params = selection.where(pending_only=pending_only)
    row = conn.execute(f"SELECT count(*) FROM quarantine{where}", params).fetchone()
    return 0 if row is None else int(row[0])


@dataclass
class ReplayReport:
    selected: int = 0
    stored: int = 0
    skipped: int = 0
    still: dict[str, int] = field(default_factory=dict)  # reason -> rows that still fail
    examples: list[tuple[int, str, str]] = field(default_factory=list)  # (id, reason, detail), the first few

    def fail(self, row_id: int, reason: str, detail: str) -> None:
        self.still[reason] = self.still.get(reason, 0) + 1
        if len(self.examples) < 20:
            self.examples.append((row_id, reason, detail))


def _decide(
    batcher: Batcher[None], found: Sequence[tuple[int, str, bytes]], now: datetime
) -> dict[int, tuple[str, str]]:
    """Decode each row with today's code: id -> (result, detail); the decodable ones are in `batcher`."""
    outcome: dict[int, tuple[str, str]] = {}
    for row_id, topic, payload in found:
        if topic.endswith("/sync"):
            outcome[row_id] = (SKIPPED, "a sync request is a request of its moment: not replayed")
            continue
        reason = batcher.add(topic, payload, None, now=now, mono=0.0)
        if reason is None:
            outcome[row_id] = (STORED, "")
        else:
            outcome[row_id] = (reason.value, "")
    for row_id, topic, payload in found:
        result, _ = outcome[row_id]
        if result not in (STORED, SKIPPED):
            outcome[row_id] = (result, batcher.quarantine_detail(topic, payload) or "")
    return outcome


def replay(
    dsn: str,
    selection: Selection,
    *,
    late_horizon: timedelta,
    dry_run: bool = False,
    chunk: int = 500,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Replay the selected rows not yet stored, `chunk` rows per transaction; see the module docstring."""
    report = ReplayReport()
    writer = BatchWriter(dsn, consumer=REPLAY_CONSUMER, strategy="stage")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            where, params = selection.where(pending_only=True)
            ids = [int(r[0]) for r in conn.execute(f"SELECT id FROM quarantine{where} ORDER BY id", params)]
            report.selected = len(ids)
            for start in range(0, len(ids), chunk):
                part = ids[start : start + chunk]
                found = [
                    (int(i), str(t), bytes(p))
                    for i, t, p in conn.execute(
                        "SELECT id, topic, payload FROM quarantine WHERE id = ANY(%s) ORDER BY id", (part,)
                    )
                ]
                batcher: Batcher[None] = Batcher(
                    consumer=REPLAY_CONSUMER, max_messages=max(1, len(found)), late_horizon=late_horizon
                )
                outcome = _decide(batcher, found, now())
                batch = batcher.take()
                if not dry_run and batch.accepted:
                    result = writer.write(batch)
                    assert result is not None  # no stop event: write returns only once committed
                    refused = set(result.refused)
                    for row_id, topic, payload in found:
                        if outcome[row_id][0] == STORED and (topic, payload) in refused:
                            outcome[row_id] = (Reason.OUT_OF_RANGE.value, "the database refused it")
                for row_id, _topic, _payload in found:
                    result_name, detail = outcome[row_id]
                    if result_name == STORED:
                        report.stored += 1
                    elif result_name == SKIPPED:
                        report.skipped += 1
                    else:
                        report.fail(row_id, result_name, detail)
                if not dry_run:
                    with conn.transaction():
                        conn.cursor().executemany(
                            "UPDATE quarantine SET replayed_at = now(), replay_result = %s, replay_detail = %s "
                            "WHERE id = %s",
                            [(outcome[i][0], outcome[i][1] or None, i) for i, _, _ in found],
                        )
                if progress is not None:
                    progress(len(found))
    finally:
        writer.close()
    return report
