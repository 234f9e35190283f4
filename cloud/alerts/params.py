"""Rule ids, severities and parameters as data, and how defaults are resolved.

Precedence, lowest to highest: the treatment-protocol profile's defaults (`defaults_for`: at-home or
professional, sensitive-skin variant), then what the device's active protocol sets (its phase schedule:
O5), then the device model's overrides, then the device's own overrides (`params_for_device`). An override is a mapping from a
section name ("hw" or a rule id such as "O2") to the fields it changes; anything else is a `ParamsError`.
Every default and its source is documented in cloud/alerts/README.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, StrEnum
from typing import Any

import msgspec

from contract.messages import Zone
from contract.protocol import MODEL_LIMITS, ModelLimits, TreatmentProtocol


class ParamsError(ValueError):
    """An override names an unknown rule or field, or gives a value of the wrong type or range."""


class Severity(IntEnum):
    INFO = 1
    WARNING = 2
    ALERT = 3
    CRITICAL = 4


class RuleId(StrEnum):
    O1 = "O1"
    O2 = "O2"
    O3 = "O3"
    O4 = "O4"
    O5 = "O5"
    O6 = "O6"
    O7 = "O7"
    T1 = "T1"
    T2 = "T2"
    T3 = "T3"
    T4 = "T4"
    T5 = "T5"
    T6 = "T6"
    T7 = "T7"
    T8 = "T8"
    C1 = "C1"


class Setting(StrEnum):
    HOME = "home"
    PRO = "pro"


class Phase(StrEnum):
    AUTO = "auto"  # from the device's first-seen date: intensive for the first `intensive_days`
    INTENSIVE = "intensive"
    MAINTENANCE = "maintenance"


class Policy(StrEnum):
    BLOCK = "block"
    ADVISE = "advise"
    ALLOW = "allow"


class ProtocolProfile(msgspec.Struct, frozen=True, kw_only=True):
    setting: Setting = Setting.HOME
    phase: Phase = Phase.AUTO
    sensitive: bool = False


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True

    def __post_init__(self) -> None:
        for name, value in msgspec.structs.asdict(self).items():
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")


class Hardware(_Section, frozen=True, kw_only=True):
    """The device model: level scale, output envelope, electrode area and auto-off timer."""

    max_level: int = 5
    level1_ua: float = 80.0
    max_ua: float = 400.0
    electrode_area_cm2: float = 1.0
    duty_cycle: float = 0.5
    auto_off_s: float | None = 1200.0

    def setpoint_ua(self, level: int) -> float:
        """Linear level -> µA map between level 1 and max_level (DOMAIN.md section 8: an ASSUMPTION)."""
        if self.max_level <= 1:
            return self.max_ua
        step = (self.max_ua - self.level1_ua) / (self.max_level - 1)
        return self.level1_ua + (min(max(level, 1), self.max_level) - 1) * step


class O1(_Section, frozen=True, kw_only=True):
    warn_active_s: float = 1200.0
    auto_off_grace_s: float = 120.0


class O2(_Section, frozen=True, kw_only=True):
    warn_daily_s: float = 1200.0
    alert_daily_s: float = 2400.0


class O3(_Section, frozen=True, kw_only=True):
    info_sessions: int = 2
    warn_sessions: int = 3


class O4(_Section, frozen=True, kw_only=True):
    restart_window_s: float = 600.0


class O5(_Section, frozen=True, kw_only=True):
    phase: Phase = Phase.AUTO
    intensive_days: int = 60
    intensive_max_days_per_week: int = 5
    maintenance_max_days_per_week: int = 3
    streak_days: int = 7
    clear_margin_days: int = 1


class O6(_Section, frozen=True, kw_only=True):
    max_dwell_s: float = 60.0


class O7(_Section, frozen=True, kw_only=True):
    restricted_zones: tuple[Zone, ...] = (Zone.ORBITAL, Zone.TEMPLE)
    min_dwell_s: float = 1.0


class T1(_Section, frozen=True, kw_only=True):
    after_s: float = 180.0
    min_level_ups: int = 2
    current_rise_ratio: float = 1.5
    window_s: int = 30


class T2(_Section, frozen=True, kw_only=True):
    window_days: int = 14
    creep_levels: float = 2.0
    max_use_ratio: float = 0.8
    min_sessions: int = 4
    clear_margin_levels: float = 0.5
    clear_margin_ratio: float = 0.1


class T3(_Section, frozen=True, kw_only=True):
    max_fraction: float = 0.5
    consecutive_sessions: int = 5
    clear_margin: float = 0.1


class T4(_Section, frozen=True, kw_only=True):
    window_days: int = 7
    warn_events: int = 3
    down_after_up_s: float = 10.0
    abort_after_up_s: float = 60.0
    start_drop_s: float = 30.0
    discomfort_score: float = 4.0
    clear_margin_events: int = 1


class T5(_Section, frozen=True, kw_only=True):
    high_impedance_ohm: float = 50_000.0
    max_high_fraction: float = 0.2
    max_spikes: int = 3
    min_current_ratio: float = 0.6
    min_samples: int = 30
    clear_margin: float = 0.05


class T6(_Section, frozen=True, kw_only=True):
    warn_ma_cm2: float = 1.0
    critical_ma_cm2: float = 2.0


class T7(_Section, frozen=True, kw_only=True):
    model_margin: float = 1.1
    absolute_max_ua: float = 1000.0


class T8(_Section, frozen=True, kw_only=True):
    enabled: bool = False
    face_cap_ua: float = 200.0
    min_over_s: int = 3
    clear_margin_ua: float = 20.0


class C1(_Section, frozen=True, kw_only=True):
    min_age_years: int = 18
    surgery_months: int = 12
    metal_implants: Policy = Policy.BLOCK
    diabetes: Policy = Policy.ADVISE


class RuleParams(msgspec.Struct, frozen=True, kw_only=True):
    hw: Hardware = Hardware()
    o1: O1 = O1()
    o2: O2 = O2()
    o3: O3 = O3()
    o4: O4 = O4()
    o5: O5 = O5()
    o6: O6 = O6()
    o7: O7 = O7()
    t1: T1 = T1()
    t2: T2 = T2()
    t3: T3 = T3()
    t4: T4 = T4()
    t5: T5 = T5()
    t6: T6 = T6()
    t7: T7 = T7()
    t8: T8 = T8()
    c1: C1 = C1()


Overrides = Mapping[str, Mapping[str, Any]]
SECTIONS = ("hw", *(r.value.lower() for r in RuleId))


def _hw_of(m: ModelLimits) -> Overrides:
    hw: dict[str, Any] = {
        "max_level": m.max_level,
        "level1_ua": m.level1_ua,
        "max_ua": m.rated_max_current_ua,
        "electrode_area_cm2": m.electrode_area_cm2,
        # a clinic device has no auto-off to circumvent: O1's critical step needs one
        "auto_off_s": None if m.professional else float(m.auto_off_s),
    }
    overrides: dict[str, Mapping[str, Any]] = {"hw": hw}
    if Zone.ORBITAL not in m.restricted_zones:
        overrides["o7"] = {"restricted_zones": sorted(z.value for z in m.restricted_zones)}
    return overrides


# Per device model, from the one catalogue in contract/protocol.py (DOMAIN.md sections 1.1, 1.4, 6 T6/T7).
MODEL_OVERRIDES: dict[str, Overrides] = {name: _hw_of(m) for name, m in MODEL_LIMITS.items()}


def profile_for_model(model: str) -> ProtocolProfile:
    """Professional models get the professional profile; everything else the at-home one."""
    limits = MODEL_LIMITS.get(model)
    return ProtocolProfile(
        setting=Setting.PRO if limits is not None and limits.professional else Setting.HOME
    )


def defaults_for(profile: ProtocolProfile) -> RuleParams:
    """The protocol profile's defaults, before any model or device override."""
    p = RuleParams(o5=O5(phase=profile.phase))
    if profile.sensitive:
        p = msgspec.structs.replace(
            p,
            o2=O2(warn_daily_s=900.0, alert_daily_s=1800.0),
            o5=msgspec.structs.replace(p.o5, intensive_max_days_per_week=4, streak_days=4),
            t4=T4(warn_events=2, clear_margin_events=0),
        )
    if profile.setting is Setting.PRO:
        # One pro device serves several clients a day: per-person history rules cannot be scoped to a person
        # (the contract carries no client_ref), so they are off; the face-zone cap and long sessions apply.
        off = {"enabled": False}
        p = msgspec.structs.replace(
            p,
            hw=Hardware(max_level=12, level1_ua=10.0, max_ua=600.0, electrode_area_cm2=0.1, auto_off_s=None),
            o1=O1(warn_active_s=3600.0),
            o2=O2(**off),
            o3=O3(**off),
            o4=O4(**off),
            o5=msgspec.structs.replace(p.o5, **off),
            t2=T2(**off),
            t3=T3(**off),
            t4=T4(**off),
            t8=T8(enabled=True),
        )
    return p


def apply_overrides(params: RuleParams, overrides: Overrides | None, origin: str) -> RuleParams:
    if not overrides:
        return params
    changes: dict[str, Any] = {}
    for key, fields in overrides.items():
        name = key.lower()
        if name not in SECTIONS:
            raise ParamsError(
                f"{origin}: unknown section {key!r}; use 'hw' or a rule id ({', '.join(RuleId)})"
            )
        if not isinstance(fields, Mapping):
            raise ParamsError(f"{origin}: {key} must map parameter names to values, got {fields!r}")
        section = getattr(params, name)
        current = msgspec.structs.asdict(section)
        unknown = sorted(set(fields) - set(current))
        if unknown:
            raise ParamsError(f"{origin}: {key} has no parameter {unknown}; known: {sorted(current)}")
        try:
            changes[name] = msgspec.convert({**current, **fields}, type(section))
        except msgspec.ValidationError as e:
            raise ParamsError(f"{origin}: {key}: {e}; fix the override and reload") from e
    return msgspec.structs.replace(params, **changes)


def resolve_rule_params(
    profile: ProtocolProfile,
    model_overrides: Overrides | None = None,
    device_overrides: Overrides | None = None,
) -> RuleParams:
    """Profile defaults < model overrides < device overrides."""
    params = apply_overrides(defaults_for(profile), model_overrides, "model override")
    return apply_overrides(params, device_overrides, "device override")


def protocol_inputs(
    protocol: TreatmentProtocol | None, model: str
) -> tuple[ProtocolProfile, Overrides | None]:
    """The rule defaults a device's active treatment protocol implies: its variant picks the profile
    (`pro`, `sensitive`; a professional model is pro whatever the variant) and its phase schedule sets
    O5 (intensive days, days per week in each phase). No protocol: the model's profile alone."""
    base = profile_for_model(model)
    if protocol is None:
        return base, None
    setting = Setting.PRO if protocol.variant == "pro" else base.setting
    profile = ProtocolProfile(setting=setting, sensitive=protocol.variant == "sensitive")
    o5 = {
        "intensive_days": protocol.intensive_days,
        "intensive_max_days_per_week": protocol.intensive.max_days_per_week,
        "maintenance_max_days_per_week": protocol.maintenance.max_days_per_week,
    }
    return profile, {"o5": o5}


def params_for_device(
    model: str, protocol: TreatmentProtocol | None = None, device_overrides: Overrides | None = None
) -> RuleParams:
    """Profile defaults < the active protocol < model overrides < device overrides (ParamsError names the
    layer that is wrong)."""
    profile, from_protocol = protocol_inputs(protocol, model)
    params = defaults_for(profile)
    if protocol is not None:
        params = apply_overrides(
            params, from_protocol, f"protocol {protocol.protocol_id} v{protocol.version}"
        )
    params = apply_overrides(params, MODEL_OVERRIDES.get(model), "model override")
    return apply_overrides(params, device_overrides, "device override")
