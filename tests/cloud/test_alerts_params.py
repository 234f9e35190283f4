"""Parameter resolution (profile < model < device) and the C1 contraindication gate."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from cloud.alerts.params import C1
from cloud.alerts.rules import (
    MODEL_OVERRIDES,
    Action,
    Contraindications,
    DeviceProfile,
    ParamsError,
    Phase,
    Policy,
    ProtocolProfile,
    RuleId,
    Setting,
    Severity,
    defaults_for,
    evaluate_profile,
    resolve_rule_params,
)
from contract.messages import Zone

NOW = datetime.fromisoformat("2024-05-06T08:00:00+00:00")


def test_precedence_profile_then_model_then_device() -> None:
    sensitive = ProtocolProfile(sensitive=True)
    assert defaults_for(sensitive).o2.warn_daily_s == 900.0
    model = {"O2": {"warn_daily_s": 1000.0, "alert_daily_s": 2000.0}, "hw": {"max_ua": 350.0}}
    device = {"o2": {"warn_daily_s": 1100.0}}
    p = resolve_rule_params(sensitive, model, device)
    assert (p.o2.warn_daily_s, p.o2.alert_daily_s, p.hw.max_ua) == (1100.0, 2000.0, 350.0)
    assert p.t4.warn_events == 2  # untouched profile default survives


def test_profiles_and_models() -> None:
    pro = defaults_for(ProtocolProfile(setting=Setting.PRO))
    assert pro.t8.enabled and not pro.o2.enabled and pro.hw.auto_off_s is None
    assert defaults_for(ProtocolProfile(phase=Phase.MAINTENANCE)).o5.phase is Phase.MAINTENANCE
    ele = resolve_rule_params(ProtocolProfile(), MODEL_OVERRIDES["mf-home-ele"])
    assert ele.hw.max_ua == 192.0 and ele.o7.restricted_zones == (
        Zone.TEMPLE,
    )  # the eye head may work the orbit
    assert resolve_rule_params(
        ProtocolProfile(), {"O7": {"restricted_zones": ["neck"]}}
    ).o7.restricted_zones == (Zone.NECK,)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"X9": {"a": 1}}, "unknown section 'X9'"),
        ({"O2": {"warn_minutes": 5}}, r"O2 has no parameter \['warn_minutes'\]"),
        ({"O2": {"warn_daily_s": "lots"}}, "Expected `float`"),
        ({"T5": {"max_spikes": -1}}, "must be >= 0"),
    ],
)
def test_bad_override_is_a_clear_error(override: dict[str, dict[str, object]], match: str) -> None:
    with pytest.raises(ParamsError, match=match):
        resolve_rule_params(ProtocolProfile(), None, override)


def test_setpoint_is_linear_between_level_1_and_max() -> None:
    hw = defaults_for(ProtocolProfile()).hw
    assert [hw.setpoint_ua(level) for level in (0, 1, 3, 5, 9)] == [80.0, 80.0, 240.0, 400.0, 400.0]


FLAGS = [
    ("pregnancy", Contraindications(pregnancy=True)),
    ("implanted_electronics", Contraindications(implanted_electronics=True)),
    ("epilepsy", Contraindications(epilepsy=True)),
    ("active_cancer", Contraindications(active_cancer=True)),
    ("under_age", Contraindications(under_18=True)),
    ("under_age", Contraindications(birth_date=date(2006, 5, 7))),  # 18 tomorrow
    ("recent_surgery", Contraindications(last_surgery_on=date(2023, 6, 1))),
    ("metal_implants", Contraindications(metal_implants=True)),
]


@pytest.mark.parametrize(("reason", "flags"), FLAGS, ids=[f[0] + str(i) for i, f in enumerate(FLAGS)])
def test_c1_blocks(reason: str, flags: Contraindications) -> None:
    [d] = evaluate_profile(DeviceProfile(device_id="d", contraindications=flags), NOW)
    assert (d.rule_id, d.severity, d.blocking, d.episode_key) == (
        RuleId.C1,
        Severity.WARNING,
        True,
        "contraindication",
    )
    # the alert (seen by viewers and the ops webhook) never names the health data, only how many
    assert d.evidence == {"contraindications": 1} and reason not in d.message


def test_c1_policy_and_clear() -> None:
    ok = Contraindications(birth_date=date(2006, 5, 6), last_surgery_on=date(2023, 5, 1))
    assert evaluate_profile(DeviceProfile(device_id="d", contraindications=ok), NOW) == []
    metal = DeviceProfile(
        device_id="d", contraindications=Contraindications(metal_implants=True, diabetes=True)
    )
    [d] = evaluate_profile(metal, NOW, C1(metal_implants=Policy.ADVISE))
    assert (d.severity, d.blocking, d.evidence) == (Severity.INFO, False, {"contraindications": 2})
    assert evaluate_profile(metal, NOW, C1(metal_implants=Policy.ALLOW, diabetes=Policy.ALLOW)) == []
    cleared = evaluate_profile(
        DeviceProfile(device_id="d"), NOW, open_alerts={(RuleId.C1, "contraindication"): Severity.WARNING}
    )
    assert [(d.action, d.episode_key) for d in cleared] == [(Action.CLEAR, "contraindication")]
