"""Per-device overrides of the alert rules' parameters, the ops side: what the CLI
(`microfleet alerts params` / `override`) and the API (`/devices/{id}/alert-params`) share.

An override is validated against the device's other layers (its model and the protocol it runs) before
it is stored, so a typo is refused with the parameter's name, not found later in the engine's log. It
must also stay within the model's hard limits and keep each rule's severities in order, and weakening a
safety-critical rule needs an explicit confirmation with a reason (cloud/alerts/override_checks.py:
`review`). Every change is recorded in `alert_override_changes` (AUDIT). The engine reads the stored
overrides with every batch (cloud/alerts/device_params.py): no restart needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from cloud.alerts.device_params import params_of, protocol_of
from cloud.alerts.override_checks import Weakening, hard_limit_problems, order_problems, weakenings
from cloud.alerts.params import ParamsError, RuleParams, params_for_device

Overrides = dict[str, dict[str, Any]]

GET = """
select d.device_id, d.model, p.protocol_id, p.version, p.document::text, o.overrides::text, o.reason,
       o.updated_at, o.updated_by
from devices d
left join protocols p on p.protocol_id = d.protocol_id and p.version = d.protocol_version
left join alert_rule_overrides o on o.device_id = d.device_id
where d.device_id = %s
"""
UPSERT = """
insert into alert_rule_overrides (device_id, overrides, reason, updated_at, updated_by)
values (%s, %s::jsonb, %s, %s, %s)
on conflict (device_id) do update set overrides = excluded.overrides, reason = excluded.reason,
    updated_at = excluded.updated_at, updated_by = excluded.updated_by
"""
DELETE = "delete from alert_rule_overrides where device_id = %s"
AUDIT = """
insert into alert_override_changes (device_id, at, by_whom, reason, before, after, weakened, confirmed)
values (%s, %s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s)
"""
CONFIRM_HINT = "confirm with --confirm-weaken-critical and a --reason (API: confirm_weaken_critical, reason)"


class OverrideError(ValueError):
    """An override that cannot apply: the message names the section, the parameter and what is allowed."""


@dataclass(frozen=True, slots=True)
class DeviceParams:
    device_id: str
    model: str
    protocol: str | None  # "<protocol_id> v<version>": the protocol the device reported running
    overrides: Overrides
    reason: str
    updated_at: datetime | None
    updated_by: str
    params: RuleParams

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device_id": self.device_id,
            "model": self.model,
            "protocol": self.protocol,
            "overrides": self.overrides,
            "reason": self.reason,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "updated_by": self.updated_by,
            "params": msgspec.to_builtins(self.params),
        }
        return out


def describe(row: tuple[Any, ...]) -> DeviceParams:
    """The effective parameters of a device from a `GET` row (what the engine uses)."""
    dev, model, pid, version, doc, overrides, reason, at, by = row
    return DeviceParams(
        device_id=dev,
        model=model or "",
        protocol=f"{pid} v{version}" if pid else None,
        overrides=json.loads(overrides) if overrides else {},
        reason=reason or "",
        updated_at=at,
        updated_by=by or "",
        params=params_of(model or "", doc, overrides),
    )


def validate(row: tuple[Any, ...], overrides: Overrides) -> RuleParams:
    """The device's parameters with these overrides, or OverrideError saying what is wrong."""
    try:
        return params_for_device(row[1] or "", protocol_of(row[4]), overrides)
    except ParamsError as exc:
        raise OverrideError(str(exc)) from None


class NeedsConfirmation(OverrideError):
    """The change weakens a safety-critical rule and was not confirmed with a reason."""

    def __init__(self, weakened: list[Weakening]) -> None:
        self.weakened = weakened
        super().__init__(
            "this weakens safety-critical rules ("
            + "; ".join(map(str, weakened))
            + f"): {CONFIRM_HINT}; it is recorded in the audit trail"
        )


@dataclass(frozen=True, slots=True)
class Review:
    params: RuleParams
    weakened: list[Weakening]  # weakenings this change brings (those already stored are not repeated)


def review(
    row: tuple[Any, ...], current: Overrides, wanted: Overrides, confirmed: bool, reason: str
) -> Review:
    """Check `wanted` (replacing `current`) for a device `GET` row: OverrideError if it is malformed, leaves
    the model's hard limits or puts a warning above its alert level; NeedsConfirmation if it weakens a
    safety-critical rule (O1, T6, T7, C1) without `confirmed` and a non-empty `reason`."""
    params = validate(row, wanted)
    model, protocol = row[1] or "", protocol_of(row[4])
    problems = hard_limit_problems(params, model) + order_problems(params)
    if problems:
        raise OverrideError("refused: " + "; ".join(problems))
    base = params_for_device(model, protocol, None)
    try:
        before = set(weakenings(base, params_for_device(model, protocol, current)))
    except ParamsError:
        before = set()
    new = [w for w in weakenings(base, params) if w not in before]
    if new and not (confirmed and reason.strip()):
        raise NeedsConfirmation(new)
    return Review(params, new)


def audit_row(
    device_id: str, at: datetime, by: str, reason: str, before: Overrides, after: Overrides, r: Review | None
) -> tuple[Any, ...]:
    """The `AUDIT` parameters of one change (`r` None: the overrides were cleared)."""
    weakened = [w.to_dict() for w in r.weakened] if r else []
    return (
        device_id,
        at,
        by,
        reason,
        json.dumps(before),
        json.dumps(after),
        json.dumps(weakened),
        bool(weakened),
    )


def merge(current: Overrides, assignments: list[str]) -> Overrides:
    """`section.parameter=value` assignments (value as JSON: 900, true, null, ["cheek_l"]; anything else
    is a string) merged into `current`. A malformed assignment is an OverrideError."""
    out = {k: dict(v) for k, v in current.items()}
    for a in assignments:
        key, sep, raw = a.partition("=")
        section, dot, name = key.strip().partition(".")
        if not (sep and dot and section and name):
            raise OverrideError(f"{a!r}: write section.parameter=value, e.g. o2.warn_daily_s=900")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(section.lower(), {})[name] = value
    return out
