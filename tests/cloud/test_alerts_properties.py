"""Properties: a compliant month raises nothing; order and duplicates do not matter; local days and time zones."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.alerts.rules import (
    Action,
    AlertDecision,
    DeviceHistory,
    DeviceProfile,
    ProtocolProfile,
    RuleId,
    SessionRecord,
    Severity,
    defaults_for,
    evaluate_history,
)
from contract.messages import EndReason, Sample, SessionEnd, Zone
from tests.cloud.test_alerts_builders import DEV, end, record, run_session, sample

HOME = defaults_for(ProtocolProfile())
PROFILE = DeviceProfile(device_id=DEV)
FACE = [Zone.FOREHEAD, Zone.CHEEK_L, Zone.CHEEK_R, Zone.JAW_L, Zone.JAW_R, Zone.LIP]
TZS = [-660, -300, 0, 60, 330, 540, 840]


def _utc(day: date, local: time, tz: int) -> datetime:
    return datetime.combine(day, local, tzinfo=UTC) - timedelta(minutes=tz)


def _compliant_session(rng: random.Random, sid: str, start: datetime) -> tuple[list[Sample], SessionEnd]:
    """DOMAIN persona 1: a 4-5.5 min session at level 2 or 3, good gel (3-10 kΩ), the device kept moving."""
    level, n = rng.choice((2, 3)), rng.randint(240, 330)
    setpoint = HOME.hw.setpoint_ua(level)
    samples, zone, left = [], rng.choice(FACE), rng.randint(5, 20)
    for i in range(n):
        if left == 0:
            zone, left = rng.choice([z for z in FACE if z != zone]), rng.randint(5, 20)
        left -= 1
        samples.append(
            sample(
                start + timedelta(seconds=i),
                current=setpoint * rng.uniform(0.9, 1.05),
                imp=rng.uniform(3_000, 10_000),
                zone=zone,
                level=level,
            )
        )
    final = end(
        sid,
        start,
        float(n),
        EndReason.USER,
        level_start=level,
        current_ua_max=setpoint * 1.05,
        current_ua_p95=setpoint * 1.03,
        impedance_spikes=rng.randint(0, 1),
    )
    return samples, final


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=st.dates(min_value=date(2023, 1, 1), max_value=date(2026, 12, 31)),
    tz=st.sampled_from(TZS),
    rest=st.sets(st.integers(0, 6), min_size=2, max_size=2),
    seed=st.integers(0, 2**32),
)
def test_compliant_month_raises_nothing(first: date, tz: int, rest: set[int], seed: int) -> None:
    rng = random.Random(seed)
    records: list[SessionRecord] = []
    first_seen = _utc(first, time(7, 0), tz)
    for k in range(30):
        day = first + timedelta(days=k)
        if day.weekday() in rest:
            continue
        start = _utc(day, time(rng.randint(6, 22), rng.randint(0, 50)), tz)
        sid = f"s{k}"
        samples, final = _compliant_session(rng, sid, start)
        _, live = run_session(samples, HOME, sid=sid, start=start, final=final, batch=30)
        assert live == [], live
        records.append(SessionRecord.from_end(final, tz))
        h = DeviceHistory.of(first_seen, records)
        assert evaluate_history(final, h, PROFILE, HOME, final.ended_at) == []


_session = st.tuples(
    st.integers(0, 20),  # day
    st.integers(0, 23 * 60),  # local minute of day
    st.integers(30, 1500),  # active seconds
    st.integers(1, 5),  # level
    st.sampled_from(list(EndReason)),
    st.sampled_from(TZS[:3]),
)


def _records(specs: list[tuple[int, int, int, int, EndReason, int]]) -> list[SessionRecord]:
    base = date(2024, 5, 6)
    return [
        record(
            f"s{i}",
            _utc(base + timedelta(days=d), time(m // 60, m % 60), tz),
            a,
            reason,
            tz,
            level_start=lv,
            current_ua_p95=lv * 80.0,
        )
        for i, (d, m, a, lv, reason, tz) in enumerate(specs)
    ]


@settings(max_examples=60, deadline=None)
@given(specs=st.lists(_session, min_size=1, max_size=25), data=st.data())
def test_permutation_and_duplication_change_nothing(
    specs: list[tuple[int, int, int, int, EndReason, int]], data: st.DataObject
) -> None:
    recs = _records(specs)
    first_seen = min(r.started_at for r in recs)
    now = max(r.ended_at for r in recs) + timedelta(hours=1)
    target = data.draw(st.sampled_from(recs))
    final = end(target.session_id, target.started_at, target.duration_active_s, target.end_reason)
    shuffled = data.draw(st.permutations(recs + data.draw(st.lists(st.sampled_from(recs), max_size=10))))
    a = evaluate_history(final, DeviceHistory.of(first_seen, recs), PROFILE, HOME, now)
    b = evaluate_history(final, DeviceHistory.of(first_seen, shuffled), PROFILE, HOME, now)
    assert a == b
    assert DeviceHistory.of(first_seen, shuffled) == DeviceHistory.of(first_seen, recs)


def _arrive(recs: list[SessionRecord], now: datetime) -> dict[tuple[RuleId, str], Severity]:
    """A minimal engine: sessions arrive one by one; keep the highest severity raised per episode."""
    first_seen = min(r.started_at for r in recs)
    seen: list[SessionRecord] = []
    opened: dict[tuple[RuleId, str], Severity] = {}
    raised: dict[tuple[RuleId, str], Severity] = {}
    for r in recs:
        seen.append(r)
        h = DeviceHistory.of(first_seen, seen, opened)
        decisions: list[AlertDecision] = evaluate_history(
            end(r.session_id, r.started_at, r.duration_active_s, r.end_reason), h, PROFILE, HOME, now
        )
        for d in decisions:
            k = (d.rule_id, d.episode_key)
            if d.action is Action.RAISE:
                opened[k] = raised[k] = max(d.severity, raised.get(k, d.severity))
            else:
                opened.pop(k, None)
    return raised


@settings(max_examples=40, deadline=None)
@given(specs=st.lists(_session, min_size=1, max_size=15), data=st.data())
def test_late_and_out_of_order_arrival_raises_the_same_episodes(
    specs: list[tuple[int, int, int, int, EndReason, int]], data: st.DataObject
) -> None:
    recs = _records(specs)
    now = max(r.ended_at for r in recs) + timedelta(hours=1)
    per_session = {RuleId.O2, RuleId.O3, RuleId.O4, RuleId.T6}  # episodes keyed by day or session
    in_order = {
        k: v for k, v in _arrive(sorted(recs, key=lambda r: r.started_at), now).items() if k[0] in per_session
    }
    late = data.draw(st.permutations(recs))
    assert {k: v for k, v in _arrive(late, now).items() if k[0] in per_session} == in_order


def test_local_day_at_the_date_line() -> None:
    """23:50 local counts on the day it started, in UTC+14 and UTC-11 alike (both UTC dates differ)."""
    for tz in (14 * 60, -11 * 60):
        d = date(2024, 5, 6)
        late = record("late", _utc(d, time(23, 50), tz), 1200, tz=tz)  # runs to 00:10 the next local day
        morning = record("morning", _utc(d, time(9, 0), tz), 600, tz=tz)
        next_day = record("next", _utc(d + timedelta(days=1), time(0, 30), tz), 300, tz=tz)
        h = DeviceHistory.of(morning.started_at, [late, morning, next_day])
        assert (late.local_day, next_day.local_day) == (d, d + timedelta(days=1))
        got = evaluate_history(end("late", late.started_at, 1200), h, PROFILE, HOME, next_day.ended_at)
        assert {(x.rule_id, x.severity, x.episode_key) for x in got} == {
            (RuleId.O2, Severity.WARNING, "2024-05-06"),  # 20 + 10 min on the 6th, local
            (RuleId.O3, Severity.INFO, "2024-05-06"),
        }
        assert (
            evaluate_history(end("next", next_day.started_at, 300), h, PROFILE, HOME, next_day.ended_at) == []
        )


def test_differing_copies_of_a_session_resolve_the_same_way_in_any_order() -> None:
    from tests.cloud.test_alerts_builders import T0, level_event

    full = record("a", T0, 300, events=[level_event("a", T0 + timedelta(seconds=5), 2, 3)])
    bare = record("a", T0, 300)  # the same session, redelivered before its events were attached
    one, two = DeviceHistory.of(T0, [full, bare]), DeviceHistory.of(T0, [bare, full])
    assert one == two and one.sessions == (full,)
