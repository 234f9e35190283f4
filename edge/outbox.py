"""The outbox: every uplink message is stored here before it is sent, and deleted only when the cloud has
committed it: `commit_through(n)` applies the cloud's CommitMark (every seq <= n is committed) in one
DELETE. `ack_many` deletes single rows on their PUBACK instead, for a broker without microfleet's cloud
(EdgeConfig.ack_mode="broker"). SQLite in WAL mode, one message table plus a small meta table.

Epoch. A random id made with the outbox and kept in meta (`epoch`): this life of the device's numbering. The
agent sends it in every SyncRequest, so the cloud can tell a reset outbox (a new epoch) from a sync that
later messages merely overtook.

Commit marks. The highest mark applied is kept in meta (`committed_through`, -1 before the first): marks
are cumulative and monotonic, so a lower (or equal) mark changes nothing. `floor()` is the lowest seq
the outbox still holds (`next_seq` when empty): what the agent reports in its SyncRequest. Rejecting a
mark from an earlier life of the device id (through >= next_seq) is the caller's job (edge/link.py).

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

Multi-device file (an option for simulators, off by default). A real device has one outbox file of its
own. A process that runs thousands of simulated agents can instead open ONE `OutboxFile` (one SQLite
connection, one page cache, 3 file descriptors) that holds every agent's outbox, with a device column:
    with OutboxFile(path, sync="off"):      # registered for this process while open
        ...agents whose EdgeConfig.outbox_file == path share it
An `Outbox` opened on a path that has a live `OutboxFile` in this process joins it; the semantics (seq,
bounds, overflow policy, drop counters) are the same per device. The formats differ: a single-device
file cannot be opened as a multi-device file and vice versa (OutboxError says so).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

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
_SHARED_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY,
    device  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL,
    UNIQUE (device, seq)
);
CREATE INDEX IF NOT EXISTS outbox_samples ON outbox (device, seq) WHERE kind = 'samples';
CREATE TABLE IF NOT EXISTS meta (device TEXT NOT NULL, key TEXT NOT NULL, value,
                                 PRIMARY KEY (device, key)) WITHOUT ROWID;
"""
_DROPPABLE_FIRST = Uplink.SAMPLES.value
_SYNC = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}


@dataclass(frozen=True, slots=True)
class _Sql:
    """The statements of one file format; every one takes the device id first (ignored when single)."""

    count: str
    meta_get: str
    meta_set: str
    peek: str
    oldest_of_kind: str
    oldest: str
    delete: str
    insert: str
    ack: str
    commit: str
    floor: str


_SINGLE = _Sql(
    count="SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox WHERE ?1 = ?1",
    meta_get="SELECT value FROM meta WHERE ?1 = ?1 AND key = ?2",
    meta_set="INSERT OR REPLACE INTO meta (key, value) SELECT ?2, ?3 WHERE ?1 = ?1",
    peek="SELECT seq, topic, payload FROM outbox WHERE ?1 = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    oldest_of_kind=(
        "SELECT seq, kind, length(payload) FROM outbox WHERE ?1 = ?1 AND kind = ?2 ORDER BY seq LIMIT 1"
    ),
    oldest="SELECT seq, kind, length(payload) FROM outbox WHERE ?1 = ?1 ORDER BY seq LIMIT 1",
    delete="DELETE FROM outbox WHERE ?1 = ?1 AND seq = ?2",
    insert="INSERT INTO outbox (seq, kind, topic, payload) SELECT ?2, ?3, ?4, ?5 WHERE ?1 = ?1",
    ack="DELETE FROM outbox WHERE ?1 = ?1 AND seq = ?2 RETURNING length(payload)",
    commit="DELETE FROM outbox WHERE ?1 = ?1 AND seq <= ?2 RETURNING length(payload)",
    floor="SELECT min(seq) FROM outbox WHERE ?1 = ?1",
)
_MULTI = _Sql(
    count="SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox WHERE device = ?1",
    meta_get="SELECT value FROM meta WHERE device = ?1 AND key = ?2",
    meta_set="INSERT OR REPLACE INTO meta (device, key, value) VALUES (?1, ?2, ?3)",
    peek="SELECT seq, topic, payload FROM outbox WHERE device = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    oldest_of_kind=(
        "SELECT seq, kind, length(payload) FROM outbox WHERE device = ?1 AND kind = ?2 ORDER BY seq LIMIT 1"
    ),
    oldest="SELECT seq, kind, length(payload) FROM outbox WHERE device = ?1 ORDER BY seq LIMIT 1",
    delete="DELETE FROM outbox WHERE device = ?1 AND seq = ?2",
    insert="INSERT INTO outbox (device, seq, kind, topic, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
    ack="DELETE FROM outbox WHERE device = ?1 AND seq = ?2 RETURNING length(payload)",
    commit="DELETE FROM outbox WHERE device = ?1 AND seq <= ?2 RETURNING length(payload)",
    floor="SELECT min(seq) FROM outbox WHERE device = ?1",
)


def _connect(path: Path, sync: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={_SYNC[sync]}")
    return db


def _format_of(db: sqlite3.Connection) -> str | None:
    """'single', 'multi' or None (a new, empty file)."""
    cols = [r[1] for r in db.execute("PRAGMA table_info(outbox)")]
    if not cols:
        return None
    return "multi" if "device" in cols else "single"


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


class OutboxFile:
    """One SQLite file holding the outboxes of many devices (simulators): see the module docstring.

    While open it is registered for this process under its resolved path; `Outbox(path, ...)` joins it.
    Devices are isolated by the `device` column; an Outbox already open for a device cannot be opened
    twice. Close it after every Outbox that uses it."""

    _open: ClassVar[dict[Path, OutboxFile]] = {}

    def __init__(self, path: Path, *, sync: str = "normal", cache_kib: int = 16_384) -> None:
        key = path.resolve()
        if key in OutboxFile._open:
            raise OutboxError(f"{path} is already open as a multi-device outbox in this process")
        self.path = path
        self.db = _connect(path, sync)
        if _format_of(self.db) == "single":
            self.db.close()
            raise OutboxError(f"{path} is a single-device outbox: use another file for many devices")
        self.db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        self.db.executescript(_SHARED_SCHEMA)
        self.devices: set[str] = set()
        self._key = key
        OutboxFile._open[key] = self

    @classmethod
    def lookup(cls, path: Path) -> OutboxFile | None:
        return cls._open.get(path.resolve())

    def close(self) -> None:
        if OutboxFile._open.get(self._key) is self:
            del OutboxFile._open[self._key]
        self.db.close()

    def __enter__(self) -> OutboxFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class Outbox:
    def __init__(
        self, path: Path, device_id: str, *, max_rows: int, max_bytes: int, sync: str = "full"
    ) -> None:
        if max_rows <= 0 or max_bytes <= 0:
            raise ValueError("max_rows and max_bytes must be > 0")
        self.path = path
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.device_id = device_id
        self._shared = OutboxFile.lookup(path)
        if self._shared is not None:
            if device_id in self._shared.devices:
                raise OutboxError(f"device {device_id!r} already has an open outbox in {path}")
            self._sql = _MULTI
            self._db = self._shared.db
            self._shared.devices.add(device_id)
        else:
            self._sql = _SINGLE
            self._db = _connect(path, sync)
            if _format_of(self._db) == "multi":
                self._db.close()
                raise OutboxError(
                    f"{path} is a multi-device outbox (simulators): open it with OutboxFile first"
                )
            self._db.execute("PRAGMA cache_size=-256")  # KiB: small, many agents may share one process
            self._db.executescript(_SCHEMA)
            owner = self._meta("device_id", None)
            if owner is None:
                self._db.execute("INSERT INTO meta VALUES ('device_id', ?)", (device_id,))
            elif owner != device_id:
                self._db.close()
                raise OutboxError(
                    f"{path} holds the outbox of device {owner!r}, not {device_id!r}: use another data dir"
                )
        self._rows, self._bytes = self._db.execute(self._sql.count, (device_id,)).fetchone()
        self._next_seq = int(self._meta("next_seq", 0))
        self._dropped = {k: int(self._meta(f"dropped:{k.value}", 0)) for k in Uplink}
        self._committed = int(self._meta("committed_through", -1))
        epoch = self._meta("epoch", None)
        if epoch is None:  # a new outbox (or one from before epochs): a new life of the numbering
            epoch = uuid.uuid4().hex
            self._db.execute(self._sql.meta_set, (device_id, "epoch", epoch))
        self.epoch = str(epoch)

    # -- reads ---------------------------------------------------------------------------------------

    def _meta(self, key: str, default: object) -> Any:
        row = self._db.execute(self._sql.meta_get, (self.device_id, key)).fetchone()
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
    def committed_through(self) -> int:
        """The highest commit mark applied (-1 before the first)."""
        return int(self._committed)

    def floor(self) -> int:
        """The lowest seq still held, or `next_seq` when the outbox is empty (SyncRequest.floor)."""
        if self._rows == 0:
            return self.next_seq
        (low,) = self._db.execute(self._sql.floor, (self.device_id,)).fetchone()
        return self.next_seq if low is None else int(low)

    @property
    def dropped(self) -> int:
        return sum(self._dropped.values())

    def stats(self) -> OutboxStats:
        by_kind = {k.value: n for k, n in self._dropped.items() if n}
        return OutboxStats(self.depth, self.size_bytes, self._next_seq, self.dropped, by_kind)

    def peek(self, n: int, after: int = -1) -> list[Row]:
        """Up to n stored messages with seq > after, oldest first."""
        cur = self._db.execute(self._sql.peek, (self.device_id, after, n))
        return [Row(seq, topic, bytes(payload)) for seq, topic, payload in cur]

    # -- writes --------------------------------------------------------------------------------------

    def put(self, topic: str, build_payload: Callable[[int], bytes]) -> PutResult:
        """Store one message: build_payload(seq) gets its sequence number, in the same transaction."""
        kind = parse_uplink(topic).kind.value
        db, sql, dev = self._db, self._sql, self.device_id
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
                    db.execute(sql.oldest_of_kind, (dev, _DROPPABLE_FIRST)).fetchone()
                    or db.execute(sql.oldest, (dev,)).fetchone()
                )
                if victim is None:  # cannot happen: size <= max_bytes and max_rows >= 1
                    raise OutboxError("outbox is full and has nothing left to drop")
                db.execute(sql.delete, (dev, victim[0]))
                rows, nbytes = rows - 1, nbytes - victim[2]
                dropped[victim[1]] = dropped.get(victim[1], 0) + 1
            db.execute(sql.insert, (dev, seq, kind, topic, payload))
            db.execute(sql.meta_set, (dev, "next_seq", seq + 1))
            for k, n in dropped.items():
                total = self._dropped[Uplink(k)] + n
                db.execute(sql.meta_set, (dev, f"dropped:{k}", total))
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
        self._db.execute(self._sql.meta_set, (self.device_id, "next_seq", seq + 1))
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
                row = db.execute(self._sql.ack, (self.device_id, seq)).fetchone()
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

    def commit_through(self, through: int) -> int:
        """Apply a commit mark: delete every row with seq <= through in one statement and remember the
        mark. A mark not above the one already applied is a no-op. Returns the rows removed."""
        if through <= self._committed:
            return 0
        db, dev = self._db, self.device_id
        db.execute("BEGIN IMMEDIATE")
        try:
            freed = [n for (n,) in db.execute(self._sql.commit, (dev, through))]
            db.execute(self._sql.meta_set, (dev, "committed_through", through))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._committed = through
        self._rows -= len(freed)
        self._bytes -= sum(freed)
        return len(freed)

    def close(self) -> None:
        if self._shared is not None:
            self._shared.devices.discard(self.device_id)
        else:
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
