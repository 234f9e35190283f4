"""Outbox put+ack rate versus the ceiling: raw SQLite INSERT + DELETE, same pragmas, same file system.

    python bench/outbox.py [--messages 20000] [--sync normal|full] [--payload 750]

Each outbox put is one transaction (seq read + insert + counter update) and acks are deleted in
batches of --ack-batch (the link deletes every PUBACK of one event-loop turn in one transaction); the
raw loop does the same number of transactions with a bare INSERT and a bare DELETE. The "marks" figure
deletes each batch with one commit mark instead (`commit_through`: one DELETE ... WHERE seq <= n, the
default ack_mode "committed"; a real mark usually covers more than one batch). The last line is a
JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract.topics import Uplink, uplink
from edge.outbox import Outbox


def bench_outbox(
    path: Path, n: int, sync: str, payload: bytes, ack_batch: int, *, marks: bool = False
) -> float:
    ob = Outbox(path, "bench-1", max_rows=n + 1, max_bytes=1 << 30, sync=sync)
    topic = uplink("bench-1", Uplink.SAMPLES)
    t = time.perf_counter()
    pending: list[int] = []
    for _ in range(n):
        pending.append(ob.put(topic, lambda seq: payload).seq)
        if len(pending) >= ack_batch:
            if marks:  # the cloud's CommitMark covers the batch: one DELETE ... WHERE seq <= through
                ob.commit_through(pending[-1])
            else:  # a PUBACK per row (ack_mode "broker")
                ob.ack_many(pending)
            pending = []
    if marks and pending:
        ob.commit_through(pending[-1])
    else:
        ob.ack_many(pending)
    elapsed = time.perf_counter() - t
    assert ob.depth == 0
    ob.close()
    return n / elapsed


def bench_raw(path: Path, n: int, sync: str, payload: bytes, ack_batch: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync.upper()}")
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, topic TEXT, payload BLOB)")
    t = time.perf_counter()
    pending: list[int] = []
    for i in range(n):
        db.execute("INSERT INTO t VALUES (?, 'x', ?)", (i, payload))
        pending.append(i)
        if len(pending) >= ack_batch:
            db.execute("BEGIN")
            db.executemany("DELETE FROM t WHERE seq = ?", [(s,) for s in pending])
            db.execute("COMMIT")
            pending = []
    db.execute("BEGIN")
    db.executemany("DELETE FROM t WHERE seq = ?", [(s,) for s in pending])
    db.execute("COMMIT")
    elapsed = time.perf_counter() - t
    db.close()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--sync", choices=["full", "normal", "off"], default="normal")
    ap.add_argument("--payload", type=int, default=750, help="bytes per message (10 samples ~ 750 B)")
    ap.add_argument("--ack-batch", type=int, default=20)
    a = ap.parse_args()
    payload = b"x" * a.payload
    with tempfile.TemporaryDirectory() as d:
        raw = bench_raw(Path(d) / "raw.sqlite3", a.messages, a.sync, payload, a.ack_batch)
        ours = bench_outbox(Path(d) / "outbox.sqlite3", a.messages, a.sync, payload, a.ack_batch)
        marked = bench_outbox(Path(d) / "marks.sqlite3", a.messages, a.sync, payload, a.ack_batch, marks=True)
    print(f"raw SQLite INSERT+DELETE (ceiling): {raw:,.0f} msg/s")
    print(f"outbox put+ack (PUBACK per row):    {ours:,.0f} msg/s")
    print(f"outbox put+commit_through (marks):  {marked:,.0f} msg/s")
    print(f"ratio outbox/ceiling:               {ours / raw:.2f} (ack), {marked / raw:.2f} (marks)")
    print(
        json.dumps(
            {
                "messages": a.messages,
                "sync": a.sync,
                "payload_bytes": a.payload,
                "ack_batch": a.ack_batch,
                "raw_msgs_per_s": round(raw),
                "outbox_msgs_per_s": round(ours),
                "ratio": round(ours / raw, 3),
                "outbox_marks_msgs_per_s": round(marked),
                "ratio_marks": round(marked / raw, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
