from __future__ import annotations

import random
from datetime import UTC, datetime

from contract.messages import EndReason
from edge.sensor import level_setpoint_ua
from edge.summary import SummaryAccumulator
from simulators.persona import AUTO_OFF_S, PERSONAS, next_gap_s, plan_session
from simulators.sensor import COMPLIANCE_V, SimulatedSensor

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def summarize(persona: str, level: int, n: int = 600, seed: int = 1):  # type: ignore[no-untyped-def]
    sensor = SimulatedSensor(PERSONAS[persona], random.Random(seed))
    acc = SummaryAccumulator(level_start=level)
    for _ in range(n):
        r = sensor.read(NOW, level)
        assert r.voltage_v <= COMPLIANCE_V + 1e-9
        acc.add(r.current_ua, r.voltage_v, r.impedance_ohm, r.contact, r.zone)
    return acc.summary(n)


def test_good_gel_current_follows_the_level() -> None:
    for level in range(1, 6):
        s = summarize("compliant_starter", level)
        assert abs(s.current_ua_mean - level_setpoint_ua(level)) / level_setpoint_ua(level) < 0.03
        assert 3_000 * 0.5 < s.impedance_ohm_median < 10_000 * 1.5
        assert s.contact_ok_ratio > 0.95


def test_gel_skimper_is_dry_voltage_limited_and_spiky() -> None:
    sessions = [summarize("gel_skimper", 5, n=300, seed=seed) for seed in range(10)]
    for s in sessions:
        assert s.impedance_ohm_median > 40_000 * 0.8
        assert s.impedance_spikes >= 1 and s.contact_ok_ratio < 0.98
    low = [
        s for s in sessions if s.current_ua_mean < 0.6 * level_setpoint_ua(5)
    ]  # T5: below 60 % of setpoint
    assert len(low) >= 7


def test_newbie_starts_at_max_and_drops_within_30_s() -> None:
    rng = random.Random(3)
    plans = [plan_session(PERSONAS["default_max_newbie"], rng) for _ in range(60)]
    assert all(
        p.level_start == 5 and p.changes and p.changes[0][0] <= 30 and p.changes[0][1] == 2 for p in plans
    )
    aborted = sum(p.duration_s < 90 for p in plans)
    assert 10 <= aborted <= 30  # about one in three


def test_over_user_hits_the_auto_off_and_restarts() -> None:
    rng = random.Random(4)
    p = PERSONAS["over_user"]
    plans = [plan_session(p, rng) for _ in range(50)]
    assert all(900 <= x.duration_s <= AUTO_OFF_S for x in plans)
    timed = [x for x in plans if x.end_reason is EndReason.AUTO_TIMER]
    assert timed
    gaps = [next_gap_s(p, timed[0], rng) for _ in range(40)]
    assert any(g <= 300 for g in gaps)


def test_plans_are_reproducible_with_a_seed() -> None:
    a = [plan_session(PERSONAS["over_user"], random.Random(9)) for _ in range(3)]
    b = [plan_session(PERSONAS["over_user"], random.Random(9)) for _ in range(3)]
    assert a == b
