"""HTTP routes for a device's alert-rule parameters: read the effective set (viewers), replace or clear
the device's overrides (operators). The checks (hard limits, severity order, confirmed weakening of a
safety-critical rule), the audit and the SQL are cloud/alerts/overrides.py, as for the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, Field

from cloud.alerts.overrides import (
    AUDIT,
    DELETE,
    GET,
    UPSERT,
    NeedsConfirmation,
    OverrideError,
    audit_row,
    describe,
    review,
)
from cloud.api.deps import AUTH_ERRORS, Conn, Operator, Viewer, problems

router = APIRouter(prefix="/devices", tags=["alerts"], responses=AUTH_ERRORS)
DeviceId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class OverridesIn(BaseModel):
    overrides: dict[str, dict[str, Any]] = Field(
        description='Per section ("hw" or a rule id), the parameters to change, e.g. {"o2": {"warn_daily_s": 900}}.'
    )
    reason: str = Field(default="", max_length=500, description="Why (kept with the overrides).")
    confirm_weaken_critical: bool = Field(
        default=False,
        description="Needed, with a reason, to disable or loosen a safety-critical rule (O1, T6, T7, C1); "
        "without it such a change is refused with 409. Every change is audited.",
    )


async def _row(conn: Any, device_id: str) -> tuple[Any, ...]:
    row = await (await conn.execute(GET, (device_id,))).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id!r}")
    return tuple(row)


@router.get(
    "/{device_id}/alert-params",
    summary="The rule parameters the alert engine uses for a device, and their layers",
    responses=problems(404),
)
async def get_params(conn: Conn, _who: Viewer, device_id: DeviceId) -> dict[str, Any]:
    return describe(await _row(conn, device_id)).to_dict()


@router.put(
    "/{device_id}/alert-overrides",
    summary="Replace the device's overrides of rule parameters (validated against its model and protocol)",
    description="400: malformed, outside the model's hard limits, or a warning above its alert level. "
    "409: weakens a safety-critical rule without `confirm_weaken_critical` and a `reason`.",
    responses=problems(400, 404, 409),
)
async def put_overrides(conn: Conn, who: Operator, device_id: DeviceId, body: OverridesIn) -> dict[str, Any]:
    now = datetime.now(UTC)
    async with conn.transaction():
        row = await _row(conn, device_id)
        current = describe(row).overrides
        try:
            checked = review(row, current, body.overrides, body.confirm_weaken_critical, body.reason)
        except NeedsConfirmation as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        except OverrideError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        await conn.execute(UPSERT, (device_id, json.dumps(body.overrides), body.reason, now, who.name))
        await conn.execute(
            AUDIT, audit_row(device_id, now, who.name, body.reason, current, body.overrides, checked)
        )
    return describe(await _row(conn, device_id)).to_dict()


@router.delete(
    "/{device_id}/alert-overrides",
    summary="Remove the device's overrides: back to its model's and protocol's parameters",
    responses=problems(404),
)
async def delete_overrides(conn: Conn, who: Operator, device_id: DeviceId) -> dict[str, Any]:
    async with conn.transaction():
        current = describe(await _row(conn, device_id)).overrides
        await conn.execute(DELETE, (device_id,))
        await conn.execute(AUDIT, audit_row(device_id, datetime.now(UTC), who.name, "", current, {}, None))
    return describe(await _row(conn, device_id)).to_dict()
