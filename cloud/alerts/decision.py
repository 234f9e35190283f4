"""The output of every rule: an `AlertDecision`, and the plain-language text shown on the user's device.

`(device_id, rule_id, episode_key)` identifies one alert: the engine keeps at most one open per key, so a
repeated `raise` is a no-op (or raises the severity) and a `clear` closes it. Open alerts are passed back to
the rules as `OpenAlerts` so they can apply hysteresis: a clear comes only when the value has fallen below
the threshold minus a margin, never on the first dip.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import msgspec

from cloud.alerts.params import RuleId, Severity


class Action(StrEnum):
    RAISE = "raise"
    CLEAR = "clear"


EvidenceValue = str | int | float | bool | None | tuple[str, ...]
OpenAlerts = Mapping[tuple[RuleId, str], Severity]


class AlertDecision(msgspec.Struct, frozen=True, kw_only=True):
    rule_id: RuleId
    severity: Severity
    device_id: str
    episode_key: str
    message: str  # for ops: what was measured against which threshold
    notice_text: str  # for the user's device: what to do
    evidence: dict[str, EvidenceValue]
    action: Action = Action.RAISE
    blocking: bool = False  # C1 only: protocol pushes to this device must stop


NOTICE: dict[RuleId, str] = {
    RuleId.O1: "This session is longer than recommended. Stop now and let your skin rest.",
    RuleId.O2: "You have used your device a lot today. Take a rest day tomorrow.",
    RuleId.O3: "One session a day is enough for results. Skip further sessions today.",
    RuleId.O4: "The device switched off to protect your skin. Wait before starting again, ideally until tomorrow.",
    RuleId.O5: "Your skin needs rest days to respond. Plan a day off before your next session.",
    RuleId.O6: "Keep the device moving: glide to the next area when it beeps.",
    RuleId.O7: "Do not use the device on this area (around the eyes, temples or your flagged area).",
    RuleId.T1: "You raised the level during the session. Your skin adapts; a steady, lower level works as well.",
    RuleId.T2: "Your usual level has crept up. Your level is higher than your skin needs; try a lower one.",
    RuleId.T3: "You often stay at the highest level. Your level is higher than your skin needs; try a lower one.",
    RuleId.T4: "Your sessions suggest discomfort. Start at a lower level; tingling means turn it down.",
    RuleId.T5: "The current is not flowing well. Add conductive gel and clean oil off your skin.",
    RuleId.T6: "The current is too concentrated for the tip in use. Lower the level or use a larger tip.",
    RuleId.T7: "Stop using the device and contact support: it delivered more than it should.",
    RuleId.T8: "The current is above the face limit. Lower the level on face and neck areas.",
    RuleId.C1: "Please do not use the device until a doctor has confirmed it is safe for you.",
}


def decide(
    rule: RuleId,
    severity: Severity,
    device_id: str,
    episode_key: str,
    message: str,
    evidence: dict[str, EvidenceValue],
    action: Action = Action.RAISE,
    blocking: bool = False,
) -> AlertDecision:
    return AlertDecision(
        rule_id=rule,
        severity=severity,
        device_id=device_id,
        episode_key=episode_key,
        message=message,
        notice_text=NOTICE[rule],
        evidence=evidence,
        action=action,
        blocking=blocking,
    )


def raise_unless_open(
    open_alerts: OpenAlerts,
    rule: RuleId,
    severity: Severity,
    device_id: str,
    key: str,
    message: str,
    evidence: dict[str, EvidenceValue],
) -> list[AlertDecision]:
    """A raise, unless the same episode is already open at this severity or higher."""
    current = open_alerts.get((rule, key))
    if current is not None and current >= severity:
        return []
    return [decide(rule, severity, device_id, key, message, evidence)]


def clear_if_open(
    open_alerts: OpenAlerts,
    rule: RuleId,
    device_id: str,
    key: str,
    message: str,
    evidence: dict[str, EvidenceValue],
) -> list[AlertDecision]:
    current = open_alerts.get((rule, key))
    if current is None:
        return []
    return [decide(rule, current, device_id, key, message, evidence, Action.CLEAR)]
