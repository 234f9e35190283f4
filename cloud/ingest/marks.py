"""Commit marks: the database side of the end-to-end acknowledgement (docs/data-model.md, "Commit marks").

Per device, `commit_marks.through` is the highest seq such that every seq up to it is committed (stored, or
quarantined with its reason) or lies below a floor the device reported in a SyncRequest. The device keeps
every message in its outbox until a CommitMark covers it, so the mark must never pass a seq that is not
committed, and must reach every committed one.

`advance(cur, receipts, syncs)` runs inside the transaction of every ingest batch (cloud/ingest/writer.py):
  1. insert the missing mark rows, then lock the batch's devices' rows FOR UPDATE, in device_id order;
  2. apply the SyncRequests: through := greatest(through, floor - 1); a sync whose epoch differs from the
     device's known one means its outbox was reset (a new life of the numbering): through := floor - 1 and
     its receipts are deleted. A sync with the known epoch whose next_seq is at or below the mark is NOT a
     reset: it was overtaken by later messages through another member of the shared group (a sync has no
     seq of its own), so it moves nothing back. The device asked, so `requested` := true;
  3. for each device whose through + 1 is among the batch's receipts (or whose through a sync moved), read
     its stored receipts above through, and move through to the end of the contiguous run of both;
  4. store the batch's receipts that stay above the new mark, delete the stored ones it passed, and update
     the marks (`advanced_at` = the first advance not yet sent).
`commit_receipts` only ever holds receipts above their device's mark: with in-order delivery it stays empty.

Why this is right with several ingest processes committing concurrently (READ COMMITTED):
- Every transaction that reads or writes a device's receipts or mark first locks that device's mark row,
  and holds the lock until it commits or rolls back. So, per device, these transactions run their part
  (lock .. commit) one after another, never overlapping.
- READ COMMITTED takes a new snapshot for each statement, and a SELECT ... FOR UPDATE that waited for the
  lock returns the row as the previous holder committed it. The receipts scan that follows the lock is a
  new statement: it sees every receipt committed by every earlier holder.
- Invariant, true after each commit (and trivially at the start, no rows): `through` is the end of the
  contiguous run from the highest floor - 1 over every seq ever committed for the device (this life), and
  `commit_receipts` holds exactly the committed seqs above `through`. A transaction starts from that
  state (previous point), adds its receipts R and floors, and computes the run from there: through + 1 is
  not among the stored receipts (else the run would be longer), so the run can only grow if through + 1 is
  in R or a floor moved it, which is exactly when step 3 scans. It stores R above the new mark and deletes
  what the mark passed, so the invariant holds after its commit; a rollback changes nothing.
- Hence, whatever the interleaving, once the transactions holding a device's seqs have committed, its mark
  covers every seq of a contiguous committed run (tests/cloud/test_ingest_marks.py: two writers on one
  device, each with half of the seqs, interleaved at the lock).
- No deadlock between ingest processes: each transaction takes its mark locks in one statement in
  device_id order (and inserts missing rows in that order); the upserts before it (sessions, devices) also
  take their rows in key order (tables.py). A deadlock the server still reports is transient: the
  writer retries the batch.

`claim_due` and `unclaim` are the mark loop's side (the ingest service publishes CommitMark downlinks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from cloud.ingest.batcher import Sync
from cloud.ingest.rows import Receipt

log = logging.getLogger(__name__)

_INSERT_MISSING = (
    "INSERT INTO commit_marks (device_id) SELECT d FROM unnest(%s::text[]) AS d ORDER BY d "
    "ON CONFLICT (device_id) DO NOTHING"
)
_LOCK = (
    "SELECT device_id, through, epoch FROM commit_marks WHERE device_id = ANY(%s::text[]) "
    "ORDER BY device_id FOR UPDATE"
)
_EPOCH = (
    "UPDATE commit_marks AS m SET epoch = u.e FROM unnest(%s::text[], %s::text[]) AS u(d, e) "
    "WHERE m.device_id = u.d"
)
_SCAN = (
    "SELECT r.device_id, r.seq FROM unnest(%s::text[], %s::bigint[]) AS c(d, t) "
    "JOIN commit_receipts r ON r.device_id = c.d AND r.seq > c.t ORDER BY r.device_id, r.seq"
)
_STORE = (
    "INSERT INTO commit_receipts (device_id, seq) SELECT d, s FROM unnest(%s::text[], %s::bigint[]) AS u(d, s) "
    "ON CONFLICT DO NOTHING"
)
_PASSED = (
    "DELETE FROM commit_receipts r USING unnest(%s::text[], %s::bigint[]) AS u(d, t) "
    "WHERE r.device_id = u.d AND r.seq <= u.t"
)
_UPDATE = (
    "UPDATE commit_marks AS m SET through = u.t, "
    "advanced_at = CASE WHEN u.t > m.through AND m.through <= m.sent_through THEN now() ELSE m.advanced_at END, "
    "requested = m.requested OR u.req "
    "FROM unnest(%s::text[], %s::bigint[], %s::bool[]) AS u(d, t, req) WHERE m.device_id = u.d"
)


@dataclass(frozen=True, slots=True)
class Advance:
    devices: int  # mark rows locked
    advanced: int  # devices whose mark moved up
    resets: tuple[str, ...] = ()  # devices whose outbox was reset (a SyncRequest with a new epoch)


def run_end(through: int, seqs: Iterable[int]) -> int:
    """Pure: the end of the contiguous run through + 1, through + 2, ... in `seqs` (through if none)."""
    have = set(seqs)
    while through + 1 in have:
        through += 1
    return through


def apply_syncs(through: dict[str, int], epochs: dict[str, str], syncs: Sequence[Sync]) -> set[str]:
    """Pure: apply SyncRequests (in order) to the marks in `through` and the known outbox `epochs` (''
    unknown); returns the devices that were reset (a sync with another epoch than the known one)."""
    resets: set[str] = set()
    for device, floor, _next_seq, epoch in syncs:
        known = epochs.get(device, "")
        if epoch and known and epoch != known:
            through[device] = floor - 1
            resets.add(device)
        else:
            through[device] = max(through[device], floor - 1)
        if epoch:
            epochs[device] = epoch
    return resets


def advance(cur: psycopg.Cursor[Any], receipts: Sequence[Receipt], syncs: Sequence[Sync]) -> Advance:
    """Record the batch's receipts and syncs and move the marks; inside the batch's transaction."""
    devices = sorted({d for d, _ in receipts} | {s[0] for s in syncs})
    if not devices:
        return Advance(0, 0)
    cur.execute(_INSERT_MISSING, (devices,))
    cur.execute(_LOCK, (devices,))
    locked = cur.fetchall()
    before = {str(d): int(t) for d, t, _e in locked}
    known = {str(d): str(e) for d, _t, e in locked}
    through, epochs = dict(before), dict(known)
    resets = apply_syncs(through, epochs, syncs)
    moved = sorted(d for d, e in epochs.items() if e != known.get(d, ""))
    if moved:
        cur.execute(_EPOCH, (moved, [epochs[d] for d in moved]))
    floored = {d for d in devices if through[d] > before[d]}  # stored receipts at or below it are passed
    if resets:
        log.warning(
            "outbox reset on %d device(s) (a sync with a new epoch): marks restart at their floor: %s",
            len(resets),
            ", ".join(sorted(resets)[:10]),
        )
        cur.execute("DELETE FROM commit_receipts WHERE device_id = ANY(%s::text[])", (sorted(resets),))
    fresh: dict[str, set[int]] = {}
    for d, s in receipts:
        if s > through[d]:
            fresh.setdefault(d, set()).add(s)
    scan = sorted(
        {d for d, seqs in fresh.items() if through[d] + 1 in seqs}
        | {d for d in devices if through[d] != before[d]}
    )
    stored: dict[str, list[int]] = {}
    if scan:
        cur.execute(_SCAN, (scan, [through[d] for d in scan]))
        for d, s in cur.fetchall():
            stored.setdefault(str(d), []).append(int(s))
    passed: list[tuple[str, int]] = []  # (device, new through) whose stored receipts the mark passed
    for d in scan:
        old = through[d]
        through[d] = run_end(old, [*stored.get(d, ()), *fresh.get(d, ())])
        if d in floored or (stored.get(d) and through[d] > old):
            passed.append((d, through[d]))
    keep = [(d, s) for d, seqs in fresh.items() for s in seqs if s > through[d]]
    if keep:
        cur.execute(_STORE, ([d for d, _ in keep], [s for _, s in keep]))
    if passed:
        cur.execute(_PASSED, ([d for d, _ in passed], [t for _, t in passed]))
    requested = {s[0] for s in syncs}
    changed = [d for d in devices if through[d] != before[d] or d in requested]
    if changed:
        cur.execute(_UPDATE, (changed, [through[d] for d in changed], [d in requested for d in changed]))
    advanced = sum(1 for d in devices if through[d] > before[d])
    return Advance(len(devices), advanced, tuple(sorted(resets)))


_CLAIM = """
WITH due AS (
    SELECT device_id FROM commit_marks
    WHERE (requested OR through > sent_through)
      AND (requested OR through - sent_through >= %(every)s
           OR advanced_at <= now() - make_interval(secs => %(delay)s))
    ORDER BY advanced_at NULLS FIRST
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE commit_marks AS m SET sent_through = m.through, sent_at = now(), requested = false
FROM due WHERE m.device_id = due.device_id
RETURNING m.device_id, m.through
"""


def claim_due(
    conn: psycopg.Connection[Any], *, delay_s: float, every: int, limit: int = 1000
) -> list[tuple[str, int]]:
    """In its own transaction (call it with no transaction open), claim the marks to send now: requested
    by a SyncRequest, or advanced and either `every` seqs past the last one sent or `delay_s` since the
    first advance not sent. Rows an ingest transaction holds are skipped (they are due again next time).
    Returns (device_id, through) to publish as CommitMarks; call `unclaim` for those that fail."""
    with conn.transaction():
        rows = conn.execute(_CLAIM, {"every": every, "delay": delay_s, "limit": limit}).fetchall()
    return [(str(d), int(t)) for d, t in rows]


def unclaim(conn: psycopg.Connection[Any], device_ids: Sequence[str]) -> None:
    """Publishing these devices' marks failed: send them again at the next claim (requested := true)."""
    if not device_ids:
        return
    with conn.transaction():
        conn.execute(
            "UPDATE commit_marks SET requested = true WHERE device_id = ANY(%s::text[])", (list(device_ids),)
        )
