from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from edge.sensor import level_setpoint_ua
from edge.summary import SummaryAccumulator
from simulators.persona import AUTO_OFF_S, PERSONAS, assign_all, plan_day, plan_session, uses_on
from simulators.scenario import ScenarioError, parse_scenario
from simulators.sensor import COMPLIANCE_V, SimulatedSensor
from simulators.slicing import replica_number, replica_slice

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def summarize(persona: str, level: int, n: int = 600, seed: int = 1):  # type: ignore[no-untyped-def]
    sensor = SimulatedSensor(PERSONAS[persona], random.Random(seed))
    acc = SummaryAccumulator(level_start=level)
    for _ in range(n):
        r = sensor.read(NOW, level)
        assert r.voltage_v <= COMPLIANCE_V + 1e-9
        acc.add(r.current_ua, r.voltage_v, r.impedance_ohm, r.contact, r.zone)
    return acc.summary(n)


def test_ten_personas() -> None:
    assert len(PERSONAS) == 10 and not PERSONAS["compliant_starter"].expected


def test_good_gel_current_follows_the_level() -> None:
    for level in range(1, 6):
        s = summarize("compliant_starter", level)
        assert abs(s.current_ua_mean - level_setpoint_ua(level)) / level_setpoint_ua(level) < 0.03


def test_gel_skimper_is_dry_and_voltage_limited() -> None:
    sessions = [summarize("gel_skimper", 5, n=300, seed=seed) for seed in range(10)]
    assert all(s.impedance_ohm_median > 30_000 and s.impedance_spikes >= 1 for s in sessions)
    assert sum(s.current_ua_mean < 0.6 * level_setpoint_ua(5) for s in sessions) >= 6


def test_newbie_starts_at_max_and_drops_within_30_s() -> None:
    rng = random.Random(3)
    plans = [plan_session(PERSONAS["default_max_newbie"], rng, 2, 0) for _ in range(60)]
    assert all(p.level_start == 5 and p.changes[0][0] <= 30 and p.changes[0][1] == 2 for p in plans)
    assert 10 <= sum(p.duration_s < 60 for p in plans) <= 30


def test_over_user_restarts_after_auto_off_twice_a_day() -> None:
    rng = random.Random(4)
    days = [plan_day(PERSONAS["over_user"], d, d % 7, rng) for d in range(20)]
    assert all(len(d) >= 2 for d in days)
    assert any(p.restart for d in days for p in d)
    assert all(p.duration_s <= AUTO_OFF_S for d in days for p in d)


def test_compliant_uses_five_days_a_week_then_maintenance_and_lapsed_stops() -> None:
    c, lapsed = PERSONAS["compliant_starter"], PERSONAS["lapsed_user"]
    assert [uses_on(c, d, d % 7) for d in range(7)] == [True] * 5 + [False] * 2
    assert sum(uses_on(c, d, d % 7) for d in range(63, 70)) == 3
    assert uses_on(lapsed, 20, 6) and not uses_on(lapsed, 21, 0)


def test_plans_and_assignment_are_deterministic_for_a_seed() -> None:
    for name, p in PERSONAS.items():
        a = [plan_day(p, d, d % 7, random.Random(f"9:{name}")) for d in range(3)]
        b = [plan_day(p, d, d % 7, random.Random(f"9:{name}")) for d in range(3)]
        assert a == b
    weights = dict.fromkeys(PERSONAS, 1.0)
    assert assign_all(200, weights, 5) == assign_all(200, weights, 5) != assign_all(200, weights, 6)
    counts = {n: assign_all(200, weights, 5).count(n) for n in PERSONAS}
    assert set(counts.values()) == {20}


def test_scenario_parses_and_rejects_with_clear_errors() -> None:
    sc = parse_scenario(
        'name = "x"\nseed = 4\ndevices = 50\ndays = 60\nstart = 2025-01-06\n'
        "[personas]\ncompliant_starter = 3\nover_user = 1\n"
        "[overrides.over_user]\nsessions_per_day = [3, 3]\n"
    )
    assert sc.devices == 50 and sc.start == datetime(2025, 1, 6, tzinfo=UTC)
    assert sc.personas["over_user"].sessions_per_day == (3, 3)
    bad = {
        "devces = 3": "unknown key",
        "[personas]\nnobody = 1": "unknown persona `nobody`",
        "[personas]\nover_user = -1": "weight must be a number >= 0",
        "devices = 0": "`devices` must be >= 1",
        "[overrides.over_user]\nsessions = 1": "unknown field `sessions`",
        "devices = ": "not valid TOML",
    }
    for text, message in bad.items():
        with pytest.raises(ScenarioError, match=message):
            parse_scenario(text)


def test_replica_slices_cover_every_device_once() -> None:
    for devices, replicas in ((10, 3), (7, 7), (100, 4), (2, 5)):
        slices = [replica_slice(devices, replicas, r) for r in range(1, replicas + 1)]
        assert [i for s in slices for i in s] == list(range(devices))
    assert replica_number("microfleet-simulator-3") == 3
    with pytest.raises(ValueError, match="MICROFLEET_SIM_REPLICA"):
        replica_number("abc")


def test_a_compliant_clinic_stays_within_the_pro_alert_limits() -> None:
    """The clinic persona on mf-pro-1, judged with the parameters the alert engine gives a pro model (no
    protocol: the model's pro profile): no T6 (rms density on the 0.1 cm² probe) and no T8 (face cap)."""
    from cloud.alerts.params import MODEL_OVERRIDES, profile_for_model, resolve_rule_params

    clinic = PERSONAS["clinic_esthetician"]
    assert clinic.model == "mf-pro-1" and not clinic.expected
    params = resolve_rule_params(profile_for_model(clinic.model), MODEL_OVERRIDES[clinic.model])
    rng = random.Random(5)
    for seed in range(20):
        plan = plan_session(clinic, rng, seed, 9 * 3600)
        sensor = SimulatedSensor(clinic, random.Random(seed))
        acc = SummaryAccumulator(level_start=plan.level_start)
        peak = 0.0
        for _ in range(600):
            r = sensor.read(NOW, plan.level_start)
            peak = max(peak, r.current_ua)
            acc.add(r.current_ua, r.voltage_v, r.impedance_ohm, r.contact, r.zone)
        s = acc.summary(600)
        density = s.current_ua_p95 / 1000 * params.hw.duty_cycle**0.5 / params.hw.electrode_area_cm2
        assert density <= params.t6.warn_ma_cm2, f"T6: {density:.2f} mA/cm² at level {plan.level_start}"
        assert peak <= params.t8.face_cap_ua - params.t8.clear_margin_ua, f"T8: {peak:.0f} µA"
