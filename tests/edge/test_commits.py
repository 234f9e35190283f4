"""The commit timer (pure): when sent rows that no mark covers are sent again, and the backoff."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.commits import CommitTimer


def test_a_row_uncovered_past_the_timeout_is_due_and_the_timeout_doubles_until_a_mark_advances() -> None:
    t = CommitTimer(10, 35)
    assert t.deadline() is None and not t.due(1e9)
    assert t.sent(0, 100.0) and not t.sent(1, 101.0)  # only the first changes the deadline
    assert t.deadline() == 110.0 and not t.due(109.9) and t.due(110.0)
    t.resent(110.0)
    assert t.timeout == 20 and t.deadline() is None  # a new pass
    t.sent(0, 111.0)
    assert t.deadline() == 131.0
    t.resent(131.0)
    t.resent(200.0)
    assert t.timeout == 35  # capped
    t.sent(0, 300.0)
    t.sent(1, 301.0)
    assert t.covered(0) and t.timeout == 10  # an advance resets it
    assert t.deadline() == 311.0  # the oldest row still waiting is seq 1
    assert not t.covered(0) and not t.covered(-1)  # not an advance
    assert t.covered(1) and t.deadline() is None and t.waiting == 0
    assert not t.sent(1, 400.0)  # already covered: nothing to wait for


def test_fill_syncs_at_most_once_per_timeout_and_only_with_rows_waiting() -> None:
    t = CommitTimer(10, 100)
    assert not t.filling(90, 0, 100, 1000, 0.8, 0.0)  # nothing sent: a mark would change nothing
    t.sent(5, 0.0)
    assert not t.filling(70, 700, 100, 1000, 0.8, 0.0)  # below the ratio
    assert t.filling(80, 0, 100, 1000, 0.8, 0.0) and t.filling(0, 800, 100, 1000, 0.8, 0.0)
    t.synced(1.0)
    assert not t.filling(80, 0, 100, 1000, 0.8, 10.9) and t.filling(80, 0, 100, 1000, 0.8, 11.0)


@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.integers(0, 30)),
            st.tuples(st.just("mark"), st.integers(-1, 30)),
            st.tuples(st.just("resend"), st.just(0)),
        ),
        max_size=80,
    )
)
def test_against_a_model(ops: list[tuple[str, int]]) -> None:
    """The deadline is the first send, in this pass, of a row above the highest mark, plus the timeout;
    the timeout is base * 2^(re-sends since the last advance), capped."""
    t = CommitTimer(1.0, 8.0)
    sends: list[tuple[int, float]] = []
    mark, doublings = -1, 0
    for now, (op, n) in enumerate(ops):
        if op == "send":
            t.sent(n, float(now))
            sends.append((n, float(now)))
        elif op == "mark":
            t.covered(n)
            if n > mark:
                mark, doublings = n, 0
        else:
            t.resent(float(now))
            sends, doublings = [], doublings + 1
        timeout = min(1.0 * 2**doublings, 8.0)
        assert t.timeout == timeout
        waiting = [at for seq, at in sends if seq > mark]
        # rows are popped from the front only once covered: an uncovered row hides later covered ones
        first_uncovered = next((at for seq, at in sends if seq > mark), None)
        assert t.deadline() == (None if first_uncovered is None else first_uncovered + timeout)
        assert (t.waiting > 0) == bool(waiting)
