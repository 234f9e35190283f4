"""Pure: what a device's rule overrides may not do (issue 14). Used by cloud/alerts/overrides.py for the CLI
and the API before anything is stored.

1. **Hard limits** of the device model (`contract.protocol.MODEL_LIMITS`, the catalogue the protocols are
   checked against): `hw.max_ua` at most the rated maximum, `hw.auto_off_s` at most the model's auto-off
   (and never off on an at-home model), `hw.max_level` at most the model's, `hw.electrode_area_cm2` at
   most the model's (a larger area hides current density from T6), `hw.duty_cycle` in (0, 1],
   `hw.level1_ua` at most `hw.max_ua`. Refused outright: no confirmation can lift them.
2. **Ordering**: a lower severity's threshold never above a higher one's (O1 warning <= the auto-off
   critical point, O2 warning <= alert, O3 info <= warning, T6 warning <= critical). Refused outright.
3. **Weakening a safety-critical rule** against the device's own baseline (its model and protocol, no
   device override): the rules that raise CRITICAL alerts (O1, T6, T7) and the blocking contraindication
   gate (C1). Disabling one, raising a critical threshold, or making C1 more permissive is allowed only
   with an explicit confirmation and a reason, and is audited (`alert_override_changes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloud.alerts.params import Policy, RuleParams
from contract.protocol import MODEL_LIMITS

CRITICAL_SECTIONS = ("o1", "t6", "t7", "c1")
# (section, field, direction): "up" weakens when the value rises, "down" when it falls
_THRESHOLDS = (
    ("o1", "auto_off_grace_s", "up"),
    ("hw", "auto_off_s", "up"),
    ("t6", "critical_ma_cm2", "up"),
    ("hw", "electrode_area_cm2", "up"),
    ("hw", "duty_cycle", "down"),
    ("t7", "model_margin", "up"),
    ("t7", "absolute_max_ua", "up"),
    ("hw", "max_ua", "up"),
    ("c1", "min_age_years", "down"),
    ("c1", "surgery_months", "down"),
)
_POLICY_RANK = {Policy.BLOCK: 0, Policy.ADVISE: 1, Policy.ALLOW: 2}


@dataclass(frozen=True, slots=True)
class Weakening:
    field: str  # "t7.enabled"
    before: Any
    after: Any

    def __str__(self) -> str:
        return f"{self.field} {_show(self.before)} -> {_show(self.after)}"

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "from": _show(self.before), "to": _show(self.after)}


def _show(value: Any) -> Any:
    return value.value if isinstance(value, Policy) else value


def hard_limit_problems(params: RuleParams, model: str) -> list[str]:
    """Each way the effective hardware parameters leave the model's envelope (empty: within it)."""
    hw = params.hw
    found: list[str] = []
    if not 0 < hw.duty_cycle <= 1:
        found.append(f"hw.duty_cycle={hw.duty_cycle}: must be in (0, 1]")
    if hw.level1_ua > hw.max_ua:
        found.append(f"hw.level1_ua={hw.level1_ua}: above hw.max_ua={hw.max_ua}")
    limits = MODEL_LIMITS.get(model)
    if limits is None:
        return found
    name = f"the {model} model's"
    if hw.max_ua > limits.rated_max_current_ua:
        found.append(f"hw.max_ua={hw.max_ua}: above {name} rated maximum {limits.rated_max_current_ua} µA")
    if hw.max_level > limits.max_level:
        found.append(f"hw.max_level={hw.max_level}: above {name} {limits.max_level} levels")
    if hw.electrode_area_cm2 > limits.electrode_area_cm2:
        found.append(
            f"hw.electrode_area_cm2={hw.electrode_area_cm2}: above {name} electrode area "
            f"{limits.electrode_area_cm2} cm² (it would hide current density from T6)"
        )
    if hw.auto_off_s is None and not limits.professional:
        found.append(f"hw.auto_off_s=null: {name} auto-off ({limits.auto_off_s} s) cannot be switched off")
    elif hw.auto_off_s is not None and hw.auto_off_s > limits.auto_off_s:
        found.append(f"hw.auto_off_s={hw.auto_off_s}: above {name} auto-off {limits.auto_off_s} s")
    return found


def order_problems(params: RuleParams) -> list[str]:
    """Each pair of severity thresholds out of order (a warning above its alert or critical level)."""
    found: list[str] = []
    p = params
    if p.hw.auto_off_s is not None and p.o1.warn_active_s > p.hw.auto_off_s + p.o1.auto_off_grace_s:
        critical = p.hw.auto_off_s + p.o1.auto_off_grace_s
        found.append(
            f"o1.warn_active_s={p.o1.warn_active_s}: above the critical point {critical} "
            "(hw.auto_off_s + o1.auto_off_grace_s)"
        )
    pairs = (
        ("o2.warn_daily_s", p.o2.warn_daily_s, "o2.alert_daily_s", p.o2.alert_daily_s),
        ("o3.info_sessions", p.o3.info_sessions, "o3.warn_sessions", p.o3.warn_sessions),
        ("t6.warn_ma_cm2", p.t6.warn_ma_cm2, "t6.critical_ma_cm2", p.t6.critical_ma_cm2),
    )
    for low_name, low, high_name, high in pairs:
        if low > high:
            found.append(f"{low_name}={low}: above {high_name}={high} (a lower severity must come first)")
    return found


def _looser(was: Any, now: Any, direction: str) -> bool:
    if was is None:
        return False  # no check before (a pro model's auto-off): nothing to weaken
    if now is None:
        return direction == "up"  # an auto-off switched off: the check is gone
    return bool(now > was) if direction == "up" else bool(now < was)


def weakenings(base: RuleParams, new: RuleParams) -> list[Weakening]:
    """Pure: how `new` weakens the safety-critical rules against `base` (the device without overrides)."""
    found: list[Weakening] = []
    for section in CRITICAL_SECTIONS:
        was, now = getattr(base, section).enabled, getattr(new, section).enabled
        if was and not now:
            found.append(Weakening(f"{section}.enabled", was, now))
    for section, field, direction in _THRESHOLDS:
        was, now = getattr(getattr(base, section), field), getattr(getattr(new, section), field)
        if was != now and _looser(was, now, direction):
            found.append(Weakening(f"{section}.{field}", was, now))
    for field in ("metal_implants", "diabetes"):
        was, now = getattr(base.c1, field), getattr(new.c1, field)
        if _POLICY_RANK[now] > _POLICY_RANK[was]:
            found.append(Weakening(f"c1.{field}", was, now))
    return found
