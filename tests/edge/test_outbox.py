from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.topics import Uplink, uplink
from edge.outbox import Outbox, OutboxError, inspect

SAMPLES = uplink("dev-1", Uplink.SAMPLES)
START = uplink("dev-1", Uplink.SESSION_START)
END = uplink("dev-1", Uplink.SESSION_END)
EVENT = uplink("dev-1", Uplink.EVENT)


def payload(size: int = 100):  # type: ignore[no-untyped-def]
    return lambda seq: f"{seq:08d}".encode().ljust(size, b".")


def open_outbox(tmp_path: Path, rows: int = 1000, nbytes: int = 1 << 20) -> Outbox:
    return Outbox(tmp_path / "o.sqlite3", "dev-1", max_rows=rows, max_bytes=nbytes, sync="normal")


def test_seq_is_given_in_order_survives_reopen_and_never_repeats(tmp_path: Path) -> None:
    ob = open_outbox(tmp_path)
    seqs = [ob.put(SAMPLES, payload()).seq for _ in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    assert ob.reserve_seq() == 5
    ob.ack_many([0, 1, 2, 3, 4])
    assert ob.depth == 0
    ob.close()
    ob = open_outbox(tmp_path)
    assert ob.put(START, payload()).seq == 6
    ob.close()


def test_a_failing_payload_builder_consumes_no_seq_and_stores_nothing(tmp_path: Path) -> None:
    ob = open_outbox(tmp_path)

    def boom(seq: int) -> bytes:
        raise ValueError("bad")

    with pytest.raises(ValueError):
        ob.put(SAMPLES, boom)
    assert (ob.depth, ob.next_seq) == (0, 0)
    assert ob.put(SAMPLES, payload()).seq == 0


def test_ack_deletes_only_the_acked_row(tmp_path: Path) -> None:
    ob = open_outbox(tmp_path)
    for _ in range(4):
        ob.put(SAMPLES, payload())
    assert ob.ack(2) is True
    assert ob.ack(2) is False
    assert [r.seq for r in ob.peek(10)] == [0, 1, 3]
    assert [r.seq for r in ob.peek(10, after=1)] == [3]
    assert ob.peek(1)[0].payload.startswith(b"00000000")
    assert (ob.depth, ob.size_bytes) == (3, 300)


def test_overflow_drops_oldest_samples_first_and_counts_persistently(tmp_path: Path) -> None:
    ob = open_outbox(tmp_path, rows=5)
    ob.put(START, payload())  # 0
    for _ in range(3):
        ob.put(SAMPLES, payload())  # 1..3
    ob.put(EVENT, payload())  # 4
    r = ob.put(SAMPLES, payload())  # 5 drops 1
    assert r.dropped == 1
    r = ob.put(END, payload())  # 6 drops 2
    assert [row.seq for row in ob.peek(10)] == [0, 3, 4, 5, 6]
    assert ob.dropped == 2 and ob.depth == 5
    ob.close()
    ob = open_outbox(tmp_path, rows=5)
    assert ob.stats().dropped_by_kind == {"samples": 2}
    assert inspect(tmp_path / "o.sqlite3").dropped == 2
    ob.close()


def test_when_only_protected_rows_remain_the_oldest_of_any_kind_goes(tmp_path: Path) -> None:
    ob = open_outbox(tmp_path, rows=2)
    ob.put(START, payload())
    ob.put(EVENT, payload())
    assert ob.put(END, payload()).dropped == 1
    assert [row.seq for row in ob.peek(10)] == [1, 2]
    assert ob.stats().dropped_by_kind == {"session_start": 1}


def test_byte_bound_is_enforced_and_oversized_message_refused(tmp_path: Path) -> None:
    ob = open_outbox(tmp_path, rows=100, nbytes=1000)
    for _ in range(10):
        ob.put(SAMPLES, payload(100))
    r = ob.put(SAMPLES, payload(250))
    assert r.dropped == 3 and ob.size_bytes <= 1000
    with pytest.raises(OutboxError, match="larger than the whole outbox"):
        ob.put(SAMPLES, payload(1001))
    assert ob.size_bytes <= 1000


def test_a_data_dir_belongs_to_one_device(tmp_path: Path) -> None:
    open_outbox(tmp_path).close()
    with pytest.raises(OutboxError, match="another data dir"):
        Outbox(tmp_path / "o.sqlite3", "dev-2", max_rows=10, max_bytes=1000)
    with pytest.raises(OutboxError, match="--data-dir"):
        inspect(tmp_path / "nope.sqlite3")


def test_topics_that_are_not_uplinks_are_refused(tmp_path: Path) -> None:
    ob = open_outbox(tmp_path)
    with pytest.raises(Exception, match="not mf/v1"):
        ob.put("some/topic", payload())


def test_commit_through_deletes_every_row_up_to_the_mark_and_remembers_it(tmp_path: Path) -> None:
    ob = open_outbox(tmp_path)
    assert ob.floor() == 0 and ob.committed_through == -1  # empty: the floor is next_seq
    for _ in range(6):
        ob.put(SAMPLES, payload(100))
    assert ob.floor() == 0
    assert ob.commit_through(3) == 4
    assert (ob.depth, ob.size_bytes, ob.floor(), ob.committed_through) == (2, 200, 4, 3)
    assert [r.seq for r in ob.peek(10)] == [4, 5]
    assert ob.commit_through(2) == 0 and ob.commit_through(3) == 0  # lower or equal marks: no-op
    assert ob.depth == 2
    ob.close()
    ob = open_outbox(tmp_path)  # the mark is persisted, and the counts are right after a reopen
    assert (ob.committed_through, ob.depth, ob.size_bytes) == (3, 2, 200)
    assert ob.commit_through(5) == 2 and ob.depth == 0 and ob.size_bytes == 0
    assert ob.floor() == ob.next_seq == 6
    ob.close()


@settings(max_examples=60)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.integers(8, 300)), st.tuples(st.just("mark"), st.integers(-1, 40))
        ),
        max_size=60,
    )
)
def test_marks_against_a_model(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]
) -> None:
    """Any interleaving of puts and (possibly stale) marks: the outbox holds exactly the seqs above the
    highest mark applied so far, its cached counts equal a recount, and floor() is their minimum."""
    ob = open_outbox(tmp_path_factory.mktemp("marks"))
    held: dict[int, int] = {}
    mark = -1
    for op, n in steps:
        if op == "put":
            seq = ob.put(SAMPLES, payload(n)).seq
            held[seq] = n
        else:
            removed = ob.commit_through(n)
            expected = [s for s in held if s <= n] if n > mark else []
            assert removed == len(expected)
            for s in expected:
                del held[s]
            mark = max(mark, n)
        assert ob.committed_through == mark
        assert (ob.depth, ob.size_bytes) == (len(held), sum(held.values()))
        assert ob.floor() == (min(held) if held else ob.next_seq)
        assert [r.seq for r in ob.peek(1000)] == sorted(held)
    ob.close()


def test_the_epoch_is_made_with_the_outbox_and_kept_for_its_life(tmp_path: Path) -> None:
    """SyncRequest.epoch: the cloud restarts a device's mark only for a new epoch (a reset outbox)."""
    first = Outbox(tmp_path / "a" / "outbox.db", "dev-e", max_rows=10, max_bytes=10_000)
    epoch = first.epoch
    first.close()
    again = Outbox(tmp_path / "a" / "outbox.db", "dev-e", max_rows=10, max_bytes=10_000)
    reset = Outbox(tmp_path / "b" / "outbox.db", "dev-e", max_rows=10, max_bytes=10_000)
    assert len(epoch) == 32 and again.epoch == epoch and reset.epoch != epoch
    again.close()
    reset.close()
