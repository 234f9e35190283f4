"""The outbox: every uplink message is stored here before it is sent, and deleted only when the broker
has acknowledged it (QoS 1 PUBACK). SQLite in WAL mode, one message table plus a small meta table.

Sequence numbers. The per-device `seq` counter lives in the meta table of the same database and is
advanced in the same transaction as the insert, so a number is never given twice, across restarts too
(with `sync="full"` also across power cuts). Birth messages reserve a number with `reserve_seq()`.

Bounds. At most `max_rows` messages and `max_bytes` of payload. Overflow policy, applied inside the
transaction that stores a new message, until the new message fits:
  1. drop the oldest `samples` messages (raw 1 Hz data; the session's summary survives in session_end);
  2. only if no `samples` message is left, drop the oldest message of any kind.
session_start, session_end and events are therefore dropped only when the outbox holds nothing else,
which takes thousands of sessions offline. Every dropped message is counted per kind in the meta table
(persisted); the agent reports the total in Status.outbox_dropped and in a DeviceEvent(OUTBOX_OVERFLOW).
A single message larger than the whole byte budget is refused with OutboxError (nothing is dropped).

Threading: one Outbox belongs to one agent on one event loop; calls are short and synchronous (no
threads). A data dir belongs to one device: opening it for another device id is an error.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.topics import Uplink, parse_uplink

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY,
    kind    TEXT NOT NULL,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_samples ON outbox (seq) WHERE kind = 'samples';
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""
_DROPPABLE_FIRST = Uplink.SAMPLES.value


class OutboxError(Exception):
    """The outbox cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class PutResult:
    seq: int
    dropped: int  # messages dropped by the overflow policy to make room for this one


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    size_bytes: int
    next_seq: int
    dropped: int
    dropped_by_kind: dict[str, int]


class Outbox:
    def __init__(
        self, path: Path, device_id: str, *, max_rows: int, max_bytes: int, sync: str = "full"
    ) -> None:
        if max_rows <= 0 or max_bytes <= 0:
            raise ValueError("max_rows and max_bytes must be > 0")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={ {'full': 'FULL', 'normal': 'NORMAL', 'off': 'OFF'}[sync] }")
        self._db.execute("PRAGMA cache_size=-256")  # KiB: small, thousands of agents share one process
        self._db.executescript(_SCHEMA)
        owner = self._meta("device_id", None)
        if owner is None:
            self._db.execute("INSERT INTO meta VALUES ('device_id', ?)", (device_id,))
        elif owner != device_id:
            self._db.close()
            raise OutboxError(
                f"{path} holds the outbox of device {owner!r}, not {device_id!r}: use another data dir"
            )
        self.device_id = device_id
        self._rows, self._bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox"
        ).fetchone()
        self._next_seq = int(self._meta("next_seq", 0))
        self._dropped = {k: int(self._meta(f"dropped:{k.value}", 0)) for k in Uplink}

    # -- reads ---------------------------------------------------------------------------------------

    def _meta(self, key: str, default: object) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    @property
    def depth(self) -> int:
        return int(self._rows)

    @property
    def size_bytes(self) -> int:
        return int(self._bytes)

    @property
    def next_seq(self) -> int:
        return int(self._next_seq)

    @property
    def dropped(self) -> int:
        return sum(self._dropped.values())

    def stats(self) -> OutboxStats:
        by_kind = {k.value: n for k, n in self._dropped.items() if n}
        return OutboxStats(self.depth, self.size_bytes, self._next_seq, self.dropped, by_kind)

    def peek(self, n: int, after: int = -1) -> list[Row]:
        """Up to n stored messages with seq > after, oldest first."""
        cur = self._db.execute(
            "SELECT seq, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, n)
        )
        return [Row(seq, topic, bytes(payload)) for seq, topic, payload in cur]

    # -- writes --------------------------------------------------------------------------------------

    def put(self, topic: str, build_payload: Callable[[int], bytes]) -> PutResult:
        """Store one message: build_payload(seq) gets its sequence number, in the same transaction."""
        kind = parse_uplink(topic).kind.value
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            seq = self._next_seq
            payload = build_payload(seq)
            size = len(payload)
            if size > self.max_bytes:
                raise OutboxError(
                    f"a {size}-byte message is larger than the whole outbox ({self.max_bytes} B)"
                )
            rows, nbytes = self._rows, self._bytes
            dropped: dict[str, int] = {}
            while rows + 1 > self.max_rows or nbytes + size > self.max_bytes:
                victim = (
                    db.execute(
                        "SELECT seq, kind, length(payload) FROM outbox WHERE kind = ? ORDER BY seq LIMIT 1",
                        (_DROPPABLE_FIRST,),
                    ).fetchone()
                    or db.execute(
                        "SELECT seq, kind, length(payload) FROM outbox ORDER BY seq LIMIT 1"
                    ).fetchone()
                )
                if victim is None:  # cannot happen: size <= max_bytes and max_rows >= 1
                    raise OutboxError("outbox is full and has nothing left to drop")
                db.execute("DELETE FROM outbox WHERE seq = ?", (victim[0],))
                rows, nbytes = rows - 1, nbytes - victim[2]
                dropped[victim[1]] = dropped.get(victim[1], 0) + 1
            db.execute("INSERT INTO outbox VALUES (?, ?, ?, ?)", (seq, kind, topic, payload))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (seq + 1,))
            for k, n in dropped.items():
                total = self._dropped[Uplink(k)] + n
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"dropped:{k}", total))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._next_seq, self._rows, self._bytes = seq + 1, rows + 1, nbytes + size
        for k, n in dropped.items():
            self._dropped[Uplink(k)] += n
        return PutResult(seq, sum(dropped.values()))

    def reserve_seq(self) -> int:
        """Take a sequence number for a message that is not stored here (the birth status)."""
        seq = self._next_seq
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (seq + 1,))
        self._next_seq = seq + 1
        return seq

    def ack(self, seq: int) -> bool:
        """Delete one message after its PUBACK. False if it was not there (already acked or dropped)."""
        return self.ack_many((seq,)) == 1

    def ack_many(self, seqs: Iterable[int]) -> int:
        db = self._db
        removed = 0
        freed = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for seq in seqs:
                row = db.execute(
                    "DELETE FROM outbox WHERE seq = ? RETURNING length(payload)", (seq,)
                ).fetchone()
                if row is not None:
                    removed += 1
                    freed += row[0]
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._rows -= removed
        self._bytes -= freed
        return removed

    def close(self) -> None:
        self._db.close()


def inspect(path: Path) -> OutboxStats:
    """Read an outbox's figures without opening it for writing (for `microfleet edge outbox`)."""
    if not path.exists():
        raise OutboxError(f"no outbox at {path}: check --data-dir")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        depth, nbytes = db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox"
        ).fetchone()
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    finally:
        db.close()
    by_kind = {k.split(":", 1)[1]: int(v) for k, v in meta.items() if k.startswith("dropped:") and v}
    return OutboxStats(int(depth), int(nbytes), int(meta.get("next_seq", 0)), sum(by_kind.values()), by_kind)
