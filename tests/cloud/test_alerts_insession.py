"""In-session rules: one table row per rule case (fires, with the right severity and episode key)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from cloud.alerts.rules import (
    Action,
    Contraindications,
    DeviceProfile,
    ProtocolProfile,
    RuleId,
    RuleParams,
    SessionMismatchError,
    SessionState,
    Setting,
    Severity,
    defaults_for,
    evaluate_in_session,
)
from contract.messages import EndReason, Sample, SampleBatch, SessionEnd, Zone
from tests.cloud.test_alerts_builders import DEV, T0, end, run_session, sample, secs

HOME = defaults_for(ProtocolProfile())
PRO = defaults_for(ProtocolProfile(setting=Setting.PRO))
NECK_FLAG = DeviceProfile(device_id=DEV, contraindications=Contraindications(neck_contraindicated=True))


def _levels(start_level: int, ups_at: list[int], n: int) -> list[Sample]:
    out, level = [], start_level
    for i in range(n):
        if i in ups_at:
            level += 1
        out.append(sample(T0 + timedelta(seconds=i), current=HOME.hw.setpoint_ua(level), level=level))
    return out


def _zones(zones: list[Zone], each_s: int) -> list[Sample]:
    return [sample(T0 + timedelta(seconds=i), zone=zones[i // each_s]) for i in range(len(zones) * each_s)]


Case = tuple[
    str, Callable[[], list[Sample]], RuleParams, DeviceProfile | None, SessionEnd | None, RuleId, Severity
]
CASES: list[Case] = [
    ("O1 warn: 21 min active", lambda: secs(T0, 1260), HOME, None, None, RuleId.O1, Severity.WARNING),
    ("O1 critical: auto-off failed", lambda: secs(T0, 1330), HOME, None, None, RuleId.O1, Severity.CRITICAL),
    (
        "O1 from the summary when samples were lost",
        lambda: secs(T0, 30),
        HOME,
        None,
        end("s1", T0, active_s=1300),
        RuleId.O1,
        Severity.WARNING,
    ),
    (
        "O6 dwell 61 s on one zone",
        lambda: secs(T0, 61, zone=Zone.CHEEK_L),
        HOME,
        None,
        None,
        RuleId.O6,
        Severity.WARNING,
    ),
    (
        "O7 orbital with the standard head",
        lambda: _zones([Zone.CHEEK_L, Zone.ORBITAL], 5),
        HOME,
        None,
        None,
        RuleId.O7,
        Severity.ALERT,
    ),
    (
        "O7 neck with a neck contraindication",
        lambda: _zones([Zone.JAW_L, Zone.NECK], 5),
        HOME,
        NECK_FLAG,
        None,
        RuleId.O7,
        Severity.ALERT,
    ),
    (
        "T1 two level-ups after minute 3",
        lambda: _levels(2, [200, 260], 300),
        HOME,
        None,
        None,
        RuleId.T1,
        Severity.INFO,
    ),
    (
        "T1 current +60 % over the first minute",
        lambda: secs(T0, 60, current=150) + secs(T0 + timedelta(seconds=60), 60, current=240),
        HOME,
        None,
        None,
        RuleId.T1,
        Severity.INFO,
    ),
    (
        "T5 dry skin: impedance > 50 kΩ",
        lambda: secs(T0, 40, imp=120_000),
        HOME,
        None,
        None,
        RuleId.T5,
        Severity.WARNING,
    ),
    (
        "T5 voltage-limited: current 50 % of setpoint",
        lambda: secs(T0, 40, current=80, level=2),
        HOME,
        None,
        None,
        RuleId.T5,
        Severity.WARNING,
    ),
    (
        "T5 impedance spikes in the summary",
        lambda: secs(T0, 5),
        HOME,
        None,
        end("s1", T0, impedance_spikes=3),
        RuleId.T5,
        Severity.WARNING,
    ),
    (
        "T7 above the home model cap x1.1",
        lambda: secs(T0, 3, current=450),
        HOME,
        None,
        None,
        RuleId.T7,
        Severity.CRITICAL,
    ),
    (
        "T7 above 1000 µA on a pro model",
        lambda: secs(T0, 3, current=1001),
        PRO,
        None,
        None,
        RuleId.T7,
        Severity.CRITICAL,
    ),
    (
        "T7 charging during output",
        lambda: secs(T0, 3),
        HOME,
        None,
        end("s1", T0, charging_during_output=True),
        RuleId.T7,
        Severity.CRITICAL,
    ),
    (
        "T8 pro: 250 µA on the cheek",
        lambda: secs(T0, 5, current=250, zone=Zone.CHEEK_R),
        PRO,
        None,
        None,
        RuleId.T8,
        Severity.WARNING,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rule_fires(case: Case) -> None:
    _, make, params, profile, final, rule, severity = case
    _, decisions = run_session(make(), params, profile, final=final)
    fired = [d for d in decisions if d.rule_id is rule]
    assert fired, decisions
    top = max(fired, key=lambda d: d.severity)
    assert top.severity is severity
    assert top.episode_key == "s1" and top.device_id == DEV and top.action is Action.RAISE
    assert top.notice_text and top.message
    # every other rule stays quiet on a single-fault case
    assert {d.rule_id for d in decisions} == {rule}


def test_good_session_is_quiet() -> None:
    zones = [Zone.FOREHEAD, Zone.CHEEK_L, Zone.CHEEK_R, Zone.JAW_L, Zone.JAW_R]
    samples = [
        sample(T0 + timedelta(seconds=i), current=240, level=3, zone=zones[(i // 20) % 5]) for i in range(300)
    ]
    _, decisions = run_session(samples, HOME, final=end("s1", T0, level_start=3, current_ua_max=250))
    assert decisions == []


def test_raise_once_then_escalate() -> None:
    _, decisions = run_session(secs(T0, 1400), HOME)
    o1 = [(d.severity, d.action) for d in decisions if d.rule_id is RuleId.O1]
    assert o1 == [(Severity.WARNING, Action.RAISE), (Severity.CRITICAL, Action.RAISE)]


def test_t5_clears_only_below_threshold_minus_margin() -> None:
    bad = secs(T0, 40, imp=120_000)  # 100 % high -> raise
    st, d1 = run_session(bad, HOME)
    assert [d.action for d in d1 if d.rule_id is RuleId.T5] == [Action.RAISE]
    # good samples until the high share is 17.4 % (below 20 % but not below 15 %): no clear yet
    t = T0 + timedelta(seconds=40)
    st, d2 = evaluate_in_session(_batch(secs(t, 190)), st, HOME, t)
    assert 0.15 < st.high_impedance_s / st.samples < 0.2 and d2 == []
    t += timedelta(seconds=190)
    st, d3 = evaluate_in_session(_batch(secs(t, 100)), st, HOME, t)
    assert [(d.rule_id, d.action) for d in d3] == [(RuleId.T5, Action.CLEAR)]


def test_t8_hysteresis_and_home_off() -> None:
    flap = [
        200 + (15 if i % 2 else -15) for i in range(60)
    ]  # 185..215 around the cap: never 3 s in a row over
    samples = [sample(T0 + timedelta(seconds=i), current=c, zone=Zone.CHEEK_L) for i, c in enumerate(flap)]
    assert run_session(samples, PRO)[1] == []
    over = secs(T0, 5, current=250, zone=Zone.FOREHEAD)
    near = secs(
        T0 + timedelta(seconds=5), 10, current=190, zone=Zone.FOREHEAD
    )  # under the cap, within margin
    low = secs(T0 + timedelta(seconds=15), 3, current=150, zone=Zone.FOREHEAD)
    _, decisions = run_session(over + near + low, PRO)
    assert [(d.rule_id, d.action) for d in decisions] == [
        (RuleId.T8, Action.RAISE),
        (RuleId.T8, Action.CLEAR),
    ]
    assert run_session(over, HOME)[1] == []  # 250 µA is within the at-home envelope; T8 is a pro rule


def _batch(samples: list[Sample]) -> SampleBatch:
    return SampleBatch(device_id=DEV, seq=1, ts=samples[0].t, session_id="s1", samples=tuple(samples))


def test_pure_duplicates_ignored_and_mismatch_rejected() -> None:
    st0 = SessionState.start(DeviceProfile(device_id=DEV), "s1", T0)
    msg = _batch(secs(T0, 10, current=450))
    st1, d1 = evaluate_in_session(msg, st0, HOME, T0)
    assert st0.samples == 0 and st0.open == {}  # the input state is untouched
    st2, d2 = evaluate_in_session(msg, st1, HOME, T0)  # a redelivered batch changes nothing
    assert st2.samples == st1.samples == 10 and len(d1) == 1 and d2 == []
    other = SampleBatch(device_id=DEV, seq=2, ts=T0, session_id="s2", samples=msg.samples)
    with pytest.raises(SessionMismatchError, match="look the state up"):
        evaluate_in_session(other, st1, HOME, T0)


def test_end_reason_does_not_matter_for_in_session_rules() -> None:
    final = end("s1", T0, reason=EndReason.AUTO_TIMER, active_s=1200)
    assert run_session(secs(T0, 20), HOME, final=final)[1] == []
