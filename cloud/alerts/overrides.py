"""Per-device overrides of the alert rules' parameters, the ops side: what the CLI
(`microfleet alerts params` / `override`) and the API (`/devices/{id}/alert-params`) share.

An override is validated against the device's other layers (its model and the protocol it runs) before
it is stored, so a typo is refused with the parameter's name, not found later in the engine's log. The
engine reads the stored overrides with every batch (cloud/alerts/device_params.py): no restart needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from cloud.alerts.device_params import params_of, protocol_of
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
