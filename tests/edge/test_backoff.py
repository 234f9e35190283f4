from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.backoff import INITIAL_DELAY_S, MAX_DELAY_S, Backoff

unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(draws=st.lists(unit, min_size=1, max_size=80))
def test_delays_are_within_the_growing_capped_ceiling(draws: list[float]) -> None:
    it = iter(draws)
    b = Backoff(random=lambda: next(it))
    for n, r in enumerate(draws):
        ceiling = min(MAX_DELAY_S, INITIAL_DELAY_S * 2**n)
        delay = b.next_delay()
        assert 0.0 <= delay <= ceiling
        assert delay == pytest.approx(r * ceiling)


@given(initial=st.floats(0.01, 10), cap=st.floats(10, 600), attempts=st.integers(0, 5000))
def test_ceiling_is_monotonic_and_capped(initial: float, cap: float, attempts: int) -> None:
    b = Backoff(initial, cap)
    assert b.ceiling(attempts) <= cap
    assert b.ceiling(attempts) <= b.ceiling(attempts + 1)
    assert b.ceiling(0) == initial


def test_reset_starts_over_and_full_jitter_reaches_the_cap() -> None:
    b = Backoff(1.0, 8.0, random=lambda: 0.999999)
    delays = [b.next_delay() for _ in range(6)]
    assert delays[:4] == pytest.approx([1, 2, 4, 8], rel=1e-5)
    assert delays[4:] == pytest.approx([8, 8], rel=1e-5)
    b.reset()
    assert b.next_delay() == pytest.approx(1.0, rel=1e-5)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(10.0, 1.0)
