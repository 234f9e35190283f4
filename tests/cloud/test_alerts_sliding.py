"""Sliding rules as days pass with no session (the engine's sweep): O5, T2 and T4 clear when their window
has slid past the use that raised them, never before, and the sweep never raises anything."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from cloud.alerts.rules import (
    Action,
    DeviceProfile,
    ProtocolProfile,
    RuleId,
    Severity,
    defaults_for,
    evaluate_history,
    evaluate_sliding,
)
from tests.cloud.test_alerts_builders import DEV, T0, discomfort, end, history, record

HOME = defaults_for(ProtocolProfile())
PROFILE = DeviceProfile(device_id=DEV)
D = timedelta(days=1)
STREAK = "streak-from-2024-05-06"


def _streak(days: int = 7) -> list:  # type: ignore[type-arg]
    return [record(f"d{i}", T0 + i * D) for i in range(days)]  # one session a day from Monday, 08:00 UTC


def _cleared(sessions: list, open_alerts: dict, days_after_last: float) -> list[tuple[RuleId, str]]:  # type: ignore[type-arg]
    now = sessions[-1].ended_at + days_after_last * D
    got = evaluate_sliding(history(sessions, open_alerts=open_alerts), PROFILE, HOME, now)
    assert all(d.action is Action.CLEAR for d in got)
    return [(d.rule_id, d.episode_key) for d in got]


def test_streak_stays_open_the_day_after_the_last_use_and_clears_after_a_whole_rest_day() -> None:
    op = {(RuleId.O5, STREAK): Severity.WARNING}
    assert _cleared(_streak(), op, 0.5) == []  # 20:00 the same day... still the run
    assert _cleared(_streak(), op, 1.0) == []  # the next day: not yet a rest day (it may still be used)
    assert _cleared(_streak(), op, 2.0) == [(RuleId.O5, STREAK)]  # a whole day without use has passed


def test_weekly_frequency_clears_once_the_week_has_slid_past() -> None:
    op = {(RuleId.O5, "rolling"): Severity.INFO}
    week = _streak(7)
    assert _cleared(week, op, 1.0) == []  # 6 of the last 7 days used: still over the limit with margin
    assert (RuleId.O5, "rolling") in _cleared(week, op, 4.0)  # 3 of the last 7


def test_discomfort_clears_when_its_signals_leave_the_window() -> None:
    op = {(RuleId.T4, "rolling"): Severity.WARNING}
    s = [record(f"c{i}", T0 + i * D, events=[discomfort(f"c{i}", T0 + i * D + D / 100, 7)]) for i in range(3)]
    assert _cleared(s, op, 3.0) == []  # all three signals still within 7 days
    assert _cleared(s, op, 8.0) == [(RuleId.T4, "rolling")]


def test_level_creep_clears_when_the_device_is_no_longer_used() -> None:
    op = {(RuleId.T2, "rolling"): Severity.WARNING}
    base = [record(f"b{i}", T0 + i * D, level_start=2) for i in range(0, 14, 2)]
    creep = base + [record(f"l{i}", T0 + i * D, level_start=4) for i in range(28, 42, 2)]
    assert {d.rule_id for d in _raised(creep)} >= {RuleId.T2}  # the case is a real creep
    assert _cleared(creep, op, 1.0) == []
    assert _cleared(creep, op, 15.0) == [(RuleId.T2, "rolling")]


def _raised(sessions: list) -> list:  # type: ignore[type-arg]
    last = sessions[-1]
    h = history(sessions)
    return evaluate_history(end(last.session_id, last.started_at), h, PROFILE, HOME, last.ended_at)


def test_nothing_open_nothing_to_clear() -> None:
    assert _cleared(_streak(), {}, 30.0) == []


@given(st.integers(min_value=0, max_value=60), st.integers(min_value=1, max_value=10))
def test_the_sweep_never_raises_and_agrees_with_a_session_end_on_clears(days_after: int, n: int) -> None:
    """Whatever the sweep clears, evaluating the same history at a session end at the same instant clears
    too: the sweep is the session-end evaluation without a session, restricted to clears."""
    sessions = _streak(n)
    op = {(RuleId.O5, STREAK): Severity.WARNING, (RuleId.O5, "rolling"): Severity.INFO}
    now = sessions[-1].ended_at + days_after * D
    h = history(sessions, open_alerts=op)
    swept = evaluate_sliding(h, PROFILE, HOME, now)
    last = sessions[-1]
    at_end = evaluate_history(end(last.session_id, last.started_at), h, PROFILE, HOME, now)
    clears_at_end = {(d.rule_id, d.episode_key) for d in at_end if d.action is Action.CLEAR}
    assert {(d.rule_id, d.episode_key) for d in swept} <= clears_at_end
    assert all(d.action is Action.CLEAR for d in swept)
