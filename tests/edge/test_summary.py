"""Property tests of the session summary maths against a plain reference."""

from __future__ import annotations

import itertools
import math
import statistics

from hypothesis import given
from hypothesis import strategies as st

from contract.messages import Zone
from edge.summary import SummaryAccumulator, median, nearest_rank

values = st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=300)
sample = st.tuples(
    st.floats(0, 1000, allow_nan=False),  # current
    st.floats(0, 100, allow_nan=False),  # voltage
    st.floats(1, 1e6, allow_nan=False),  # impedance
    st.booleans(),  # contact
    st.sampled_from([None, *Zone]),
)


@given(values, st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]))
def test_nearest_rank_is_the_smallest_value_covering_q(vs: list[float], q: float) -> None:
    s = sorted(vs)
    p = nearest_rank(s, q)
    assert p in vs
    assert sum(v <= p for v in vs) >= q * len(vs)
    assert sum(v < p for v in vs) < q * len(vs)


@given(values)
def test_median_matches_statistics(vs: list[float]) -> None:
    assert math.isclose(median(sorted(vs)), statistics.median(vs), rel_tol=1e-12, abs_tol=1e-9)


@given(st.lists(sample, max_size=200), st.integers(1, 5), st.lists(st.integers(1, 5), max_size=20))
def test_summary_against_reference(
    samples: list[tuple[float, float, float, bool, Zone | None]], level0: int, levels: list[int]
) -> None:
    acc = SummaryAccumulator(level_start=level0)
    for c, v, z, contact, zone in samples:
        acc.add(c, v, z, contact, zone)
    current = level0
    for lv in levels:
        acc.level_changed(current, lv)
        current = lv
    s = acc.summary(duration_on_s=len(samples) + 0.5)

    active = [(c, v, z) for c, v, z, contact, _ in samples if contact and c > 0]
    assert s.samples == len(samples)
    assert s.duration_active_s == len(active)
    assert s.contact_ok_ratio == (sum(x[3] for x in samples) / len(samples) if samples else 1.0)
    if active:
        cs = [a[0] for a in active]
        zs = [a[2] for a in active]
        assert math.isclose(s.current_ua_mean, statistics.fmean(cs), rel_tol=1e-9, abs_tol=1e-9)
        assert s.current_ua_max == max(cs)
        assert min(cs) <= s.current_ua_p95 <= s.current_ua_max
        assert s.impedance_ohm_max == max(zs)
        assert s.impedance_ohm_median <= s.impedance_ohm_p95 <= s.impedance_ohm_max
        steps = sum(1 for a, b in itertools.pairwise(zs) if b / a > 3 or b / a < 1 / 3)
        assert s.impedance_spikes == steps
    else:
        assert (s.current_ua_mean, s.current_ua_max, s.impedance_ohm_max, s.impedance_spikes) == (0, 0, 0, 0)
    dwell = {zd.zone: zd.dwell_s for zd in s.zones}
    for zone in Zone:
        assert dwell.get(zone, 0) == sum(1 for x in samples if x[4] is zone)
    ups = sum(1 for a, b in zip([level0, *levels], levels, strict=False) if b > a)
    downs = sum(1 for a, b in zip([level0, *levels], levels, strict=False) if b < a)
    assert (s.level_changes_up, s.level_changes_down) == (ups, downs)
    assert s.level_max == max([level0, *levels])
