"""HTTP routes for alerts: list, get (with its audit trail), ack, resolve, snooze.

The lead includes `router` in the FastAPI app (cloud/api/app.py: `app.include_router(alerts.api.router)`).
Viewers read; operators act. Actions run the same lifecycle as the CLI, audited with the token's name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from cloud.alerts.config import AlertConfig
from cloud.alerts.lifecycle import (
    AUDIT,
    LOCK_ALERT,
    TRANSITIONS,
    Action,
    LifecycleError,
    Op,
    State,
    planned_update,
)
from cloud.alerts.queries import GET, LIST, STATES, list_params
from cloud.alerts.queries import TRANSITIONS as AUDIT_TRAIL
from cloud.alerts.store import js
from cloud.api.deps import AUTH_ERRORS, Conn, Operator, Viewer, problems
from cloud.config import CloudConfig

router = APIRouter(prefix="/alerts", tags=["alerts"], responses=AUTH_ERRORS)
_ = TRANSITIONS


class ActionIn(BaseModel):
    reason: str = Field(default="", max_length=500, description="Why (kept in the audit trail).")


class SnoozeIn(ActionIn):
    until: datetime = Field(description="Aware time when the alert reopens.")


def _webhook_url() -> str:
    return AlertConfig.from_env(CloudConfig.from_env()).webhook_url


@router.get("", summary="List alerts, newest first")
async def list_alerts(
    conn: Conn,
    _who: Viewer,
    state: Annotated[str | None, Query(description=f"one of {', '.join(STATES)}")] = "live",
    device_id: str | None = None,
    before: Annotated[int | None, Query(description="page: ids below this one")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    try:
        params = list_params(state, device_id, limit, before)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(LIST, params)
        return await cur.fetchall()


@router.get("/{alert_id}", summary="One alert with its audit trail", responses=problems(404))
async def get_alert(conn: Conn, _who: Viewer, alert_id: int) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(GET, (alert_id,))
        row = await cur.fetchone()
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alert {alert_id}")
        await cur.execute(AUDIT_TRAIL, (alert_id,))
        row["transitions"] = await cur.fetchall()
        return row


async def _act(conn: Any, alert_id: int, action: Action) -> dict[str, Any]:
    now = datetime.now(UTC)
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(LOCK_ALERT, (alert_id,))
        row = await cur.fetchone()
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alert {alert_id}")
        try:
            new, update, params = planned_update(alert_id, action, State(row["state"]), now)
        except LifecycleError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        await cur.execute(update, params)
        await cur.execute(
            AUDIT, (alert_id, row["state"], new.value, row["severity"], now, action.actor, action.reason)
        )
        await cur.execute(GET, (alert_id,))
        out = await cur.fetchone()
        assert out is not None
        result: dict[str, Any] = out
        if action.op is Op.RESOLVE and _webhook_url():
            payload = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in out.items()}
            await cur.execute(
                "insert into webhook_deliveries (alert_id, event, payload, created_at, next_attempt_at) "
                "values (%s, 'resolved', %s::jsonb, %s, %s)",
                (alert_id, js({"event": "resolved", "alert": payload}), now, now),
            )
        return result


@router.post("/{alert_id}/ack", summary="Acknowledge: ops are on it", responses=problems(400, 404, 409))
async def ack(conn: Conn, who: Operator, alert_id: int, body: ActionIn | None = None) -> dict[str, Any]:
    return await _act(conn, alert_id, Action(Op.ACK, who.name, (body or ActionIn()).reason or "acknowledged"))


@router.post("/{alert_id}/resolve", summary="Resolve by hand", responses=problems(400, 404, 409))
async def resolve(conn: Conn, who: Operator, alert_id: int, body: ActionIn | None = None) -> dict[str, Any]:
    return await _act(
        conn, alert_id, Action(Op.RESOLVE, who.name, (body or ActionIn()).reason or "resolved by an operator")
    )


@router.post("/{alert_id}/snooze", summary="Snooze until a time", responses=problems(400, 404, 409))
async def snooze(conn: Conn, who: Operator, alert_id: int, body: SnoozeIn) -> dict[str, Any]:
    if body.until.tzinfo is None or body.until <= datetime.now(UTC):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "until must be an aware time in the future")
    return await _act(conn, alert_id, Action(Op.SNOOZE, who.name, body.reason or "snoozed", body.until))
