"""The multi-device outbox file (simulators): same semantics per device, isolated, formats never mixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.outbox import Outbox, OutboxError, OutboxFile


def test_devices_share_one_file_with_their_own_seq_bounds_and_drops(tmp_path: Path) -> None:
    path = tmp_path / "all.sqlite3"
    with OutboxFile(path, sync="off"):
        a = Outbox(path, "dev-a", max_rows=3, max_bytes=10_000)
        b = Outbox(path, "dev-b", max_rows=3, max_bytes=10_000)
        for i in range(5):
            a.put("mf/v1/dev-a/up/samples", lambda seq, i=i: f"a{seq}".encode())  # type: ignore[misc]
        b.put("mf/v1/dev-b/up/event", lambda seq: b"b0")
        assert (a.depth, a.next_seq, a.dropped) == (3, 5, 2) and (b.depth, b.next_seq, b.dropped) == (1, 1, 0)
        assert [r.seq for r in a.peek(10)] == [2, 3, 4] and [r.payload for r in b.peek(10)] == [b"b0"]
        assert a.ack_many([2, 3]) == 2 and b.ack(0) and a.depth == 1 and b.depth == 0
        with pytest.raises(OutboxError, match="already has an open outbox"):
            Outbox(path, "dev-a", max_rows=3, max_bytes=10_000)
        a.close()
        b.close()
    with OutboxFile(path):  # reopened: each device resumes its own counters
        a = Outbox(path, "dev-a", max_rows=3, max_bytes=10_000)
        assert (a.depth, a.next_seq, a.dropped) == (1, 5, 2)
        a.close()


def test_formats_are_never_mixed(tmp_path: Path) -> None:
    single = tmp_path / "one.sqlite3"
    Outbox(single, "dev-a", max_rows=3, max_bytes=1000).close()
    with pytest.raises(OutboxError, match="single-device outbox"):
        OutboxFile(single)
    multi = tmp_path / "many.sqlite3"
    OutboxFile(multi).close()
    with pytest.raises(OutboxError, match="open it with OutboxFile first"):
        Outbox(multi, "dev-a", max_rows=3, max_bytes=1000)


def test_commit_marks_apply_per_device_in_a_shared_file(tmp_path: Path) -> None:
    path = tmp_path / "all.sqlite3"
    with OutboxFile(path, sync="off"):
        a = Outbox(path, "dev-a", max_rows=100, max_bytes=10_000)
        b = Outbox(path, "dev-b", max_rows=100, max_bytes=10_000)
        for _ in range(5):
            a.put("mf/v1/dev-a/up/event", lambda seq: b"a" * 10)
            b.put("mf/v1/dev-b/up/event", lambda seq: b"b" * 20)
        assert a.commit_through(2) == 3  # dev-b's rows with the same seqs are untouched
        assert (a.depth, a.size_bytes, a.floor(), a.committed_through) == (2, 20, 3, 2)
        assert (b.depth, b.size_bytes, b.floor(), b.committed_through) == (5, 100, 0, -1)
        assert a.commit_through(1) == 0 and a.depth == 2  # a lower mark: no-op
        assert b.commit_through(4) == 5 and b.floor() == b.next_seq == 5
        a.close()
        b.close()
    with OutboxFile(path):
        a = Outbox(path, "dev-a", max_rows=100, max_bytes=10_000)
        b = Outbox(path, "dev-b", max_rows=100, max_bytes=10_000)
        assert (a.committed_through, a.depth, a.floor()) == (2, 2, 3)
        assert (b.committed_through, b.depth) == (4, 0)
        a.close()
        b.close()
