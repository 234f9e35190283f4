"""Commit marks (cloud/ingest/marks.py): the pure run logic, and advance/claim_due/unclaim on a real
PostgreSQL, including two transactions on one device interleaved at the lock."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.db.migrate import migrate
from cloud.ingest import marks
from tests.support.services import scratch_database


@given(st.integers(-1, 50), st.sets(st.integers(0, 80)))
def test_run_end_is_the_end_of_the_contiguous_run(through: int, seqs: set[int]) -> None:
    end = marks.run_end(through, seqs)
    assert end >= through and all(s in seqs for s in range(through + 1, end + 1)) and end + 1 not in seqs


def test_syncs_raise_the_mark_to_the_floor_and_only_a_new_epoch_restarts_it() -> None:
    through = {"a": 5, "b": 5, "c": 5, "d": 5, "e": 5}
    epochs = {"a": "E1", "b": "E1", "c": "E1", "d": "E1"}
    syncs = [
        ("a", 3, 9, "E1"),
        ("b", 9, 12, "E1"),
        ("c", 0, 2, "E2"),  # a reset outbox: a new epoch
        ("d", 0, 2, "E1"),  # the same life, overtaken by later messages: not a reset, nothing moves back
        ("e", 2, 4, "E9"),  # the first epoch the cloud hears of: remembered
    ]
    resets = marks.apply_syncs(through, epochs, syncs)
    assert through == {"a": 5, "b": 8, "c": -1, "d": 5, "e": 5} and resets == {"c"}
    assert epochs == {"a": "E1", "b": "E1", "c": "E2", "d": "E1", "e": "E9"}


@pytest.fixture(scope="module")
def migrated() -> Iterator[str]:
    with scratch_database() as dsn:
        migrate(dsn)
        yield dsn


@pytest.fixture
def dsn(migrated: str) -> str:
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute("TRUNCATE commit_marks, commit_receipts")
    return migrated


def advance(
    dsn: str, receipts: list[tuple[str, int]], syncs: list[tuple[str, int, int, str]] | None = None
) -> marks.Advance:
    with psycopg.connect(dsn) as conn, conn.transaction():
        return marks.advance(conn.cursor(), receipts, syncs or [])


def state(dsn: str) -> tuple[dict[str, tuple[int, int, bool]], list[tuple[str, int]]]:
    with psycopg.connect(dsn) as conn:
        m = conn.execute("SELECT device_id, through, sent_through, requested FROM commit_marks").fetchall()
        r = conn.execute("SELECT device_id, seq FROM commit_receipts ORDER BY 1, 2").fetchall()
    return {d: (t, s, q) for d, t, s, q in m}, [(d, s) for d, s in r]


def test_in_order_receipts_move_the_mark_and_store_nothing(dsn: str) -> None:
    assert advance(dsn, [("a", 0), ("a", 1), ("b", 0)]).advanced == 2
    advance(dsn, [("a", 2), ("a", 2), ("a", 1)])  # duplicates and a redelivery below the mark
    assert state(dsn) == ({"a": (2, -1, False), "b": (0, -1, False)}, [])


def test_a_gap_holds_the_mark_until_it_is_filled(dsn: str) -> None:
    advance(dsn, [("a", 0), ("a", 2), ("a", 3)])
    advance(dsn, [("a", 5)])
    assert state(dsn) == ({"a": (0, -1, False)}, [("a", 2), ("a", 3), ("a", 5)])
    advance(dsn, [("a", 1)])
    assert state(dsn) == ({"a": (3, -1, False)}, [("a", 5)])


def test_a_floor_covers_what_the_device_gave_up_and_requests_a_mark(dsn: str) -> None:
    advance(dsn, [("a", 0), ("a", 3), ("a", 4), ("a", 7)])
    advance(dsn, [], [("a", 3, 9, "E1")])  # 1 and 2 dropped by the outbox: floor 3
    assert state(dsn) == ({"a": (4, -1, True)}, [("a", 7)])


def test_a_sync_from_a_reset_outbox_restarts_the_mark(dsn: str) -> None:
    advance(dsn, [("a", 0)], [("a", 1, 1, "E1")])
    advance(dsn, [("a", s) for s in range(1, 10)] + [("a", 12)])
    result = advance(dsn, [("a", 0)], [("a", 0, 3, "E2")])  # a new life of the outbox: a new epoch
    assert result.resets == ("a",)
    assert state(dsn) == ({"a": (0, -1, True)}, [])


def test_a_sync_overtaken_by_later_messages_moves_nothing_back(dsn: str) -> None:
    """A device syncs on connect, then sends; through another consumer its messages commit first. The late
    sync (next_seq below the mark now) is the same life: before the epoch it looked like a reset and wiped
    the device's receipts, stalling its mark until the device re-sent everything."""
    advance(dsn, [("a", 0)])
    advance(dsn, [("a", s) for s in range(1, 10)] + [("a", 12)])
    result = advance(dsn, [], [("a", 1, 1, "E1")])
    assert result.resets == ()
    assert state(dsn) == ({"a": (9, -1, True)}, [("a", 12)])


def test_claim_due_by_request_count_or_delay_and_unclaim(dsn: str) -> None:
    advance(dsn, [("many", s) for s in range(10)] + [("few", 0)])
    advance(dsn, [], [("asked", 0, 0, "E1")])
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert sorted(marks.claim_due(conn, delay_s=3600, every=10)) == [("asked", -1), ("many", 9)]
        assert marks.claim_due(conn, delay_s=3600, every=10) == []
        conn.execute(
            "UPDATE commit_marks SET advanced_at = now() - interval '2 seconds' WHERE device_id = 'few'"
        )
        assert marks.claim_due(conn, delay_s=1.5, every=10) == [("few", 0)]
        marks.unclaim(conn, ["few"])
        assert marks.claim_due(conn, delay_s=3600, every=10) == [("few", 0)]
        assert marks.claim_due(conn, delay_s=0, every=1) == []  # nothing advanced since it was sent


def test_claim_skips_a_mark_an_ingest_transaction_holds(dsn: str) -> None:
    advance(dsn, [("a", 0)], [("a", 0, 1, "E1")])
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as loop:
        with holder.transaction():
            marks.advance(holder.cursor(), [("a", 1)], [])
            assert marks.claim_due(loop, delay_s=0, every=1) == []
        assert marks.claim_due(loop, delay_s=0, every=1) == [("a", 1)]


def waiting_on_lock(dsn: str, application_name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
            (application_name,),
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("first_has_zero", [False, True])
def test_two_writers_on_one_device_interleaved_at_the_lock(dsn: str, first_has_zero: bool) -> None:
    """T1 locks the mark and holds it; T2 waits on the lock; T1 commits; T2 must see T1's receipts."""
    evens, odds = [("d", s) for s in range(0, 20, 2)], [("d", s) for s in range(1, 20, 2)]
    first, second = (evens, odds) if first_has_zero else (odds, evens)
    with psycopg.connect(dsn, autocommit=True) as conn:  # the row exists: only the row lock orders them
        conn.execute("INSERT INTO commit_marks (device_id) VALUES ('d')")
    with psycopg.connect(dsn) as t1:
        with t1.transaction():
            marks.advance(t1.cursor(), first, [])
            outcome: list[Any] = []

            def run_second() -> None:
                with psycopg.connect(dsn, application_name="mark-t2") as t2, t2.transaction():
                    outcome.append(marks.advance(t2.cursor(), second, []))

            t = threading.Thread(target=run_second, name="mark-t2")
            t.start()
            deadline = time.monotonic() + 10
            while not waiting_on_lock(dsn, "mark-t2"):
                assert time.monotonic() < deadline, "the second transaction never waited on the lock"
                time.sleep(0.01)
            assert not outcome
        t.join(10)
    assert outcome and state(dsn) == ({"d": (19, -1, False)}, [])


def test_two_writers_racing_many_batches_end_with_every_seq_covered(dsn: str) -> None:
    n, devices = 400, ["d1", "d2", "d3"]
    seqs = {d: list(range(n)) for d in devices}
    halves: list[list[tuple[str, int]]] = [[], []]
    rng = random.Random(7)
    for d in devices:
        rng.shuffle(seqs[d])
        for s in seqs[d]:
            halves[s % 2].append((d, s))
    errors: list[BaseException] = []
    with psycopg.connect(dsn, autocommit=True) as conn:  # rows exist: only the row locks order them
        conn.execute("INSERT INTO commit_marks (device_id) SELECT unnest(%s::text[])", (devices,))
    rounds = 40
    start = threading.Barrier(2)

    def writer(receipts: list[tuple[str, int]]) -> None:
        try:
            size = -(-len(receipts) // rounds)
            with psycopg.connect(dsn) as conn:
                for i in range(rounds):
                    start.wait(10)  # both transactions run at once, each holding its locks a while
                    with conn.transaction():
                        marks.advance(conn.cursor(), receipts[i * size : (i + 1) * size], [])
                        conn.execute("SELECT pg_sleep(%s)", (rng.uniform(0, 0.01),))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(h,), name=f"w{i}") for i, h in enumerate(halves)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert state(dsn) == ({d: (n - 1, -1, False) for d in devices}, [])
