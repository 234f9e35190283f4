"""Operator-side reads and actions shared by the CLI and the API (sync and async variants of the same SQL)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from cloud.alerts import effects
from cloud.alerts.config import AlertConfig
from cloud.alerts.lifecycle import ALERT_COLUMNS, Action, Op, apply

LIST = f"""
select {ALERT_COLUMNS} from alerts
where (%(state)s::text is null or state = %(state)s or (%(state)s = 'live' and state <> 'resolved'))
  and (%(device)s::text is null or device_id = %(device)s)
  and (%(before)s::bigint is null or id < %(before)s)
order by id desc limit %(limit)s
"""
GET = f"select {ALERT_COLUMNS} from alerts where id = %s"
TRANSITIONS = (
    "select from_state, to_state, severity::text as severity, at, actor, reason from alert_transitions "
    "where alert_id = %s order by id"
)
STATES = ("open", "acknowledged", "snoozed", "resolved", "live")


def list_params(
    state: str | None, device_id: str | None, limit: int, before: int | None = None
) -> dict[str, Any]:
    if state is not None and state not in STATES:
        raise ValueError(f"unknown state {state!r}: use one of {', '.join(STATES)}")
    return {"state": state, "device": device_id, "limit": limit, "before": before}


def list_alerts(
    conn: psycopg.Connection[Any], *, state: str | None, device_id: str | None, limit: int
) -> list[dict[str, Any]]:
    return conn.cursor(row_factory=dict_row).execute(LIST, list_params(state, device_id, limit)).fetchall()


def act(
    conn: psycopg.Connection[Any], cfg: AlertConfig, alert_id: int, action: Action, now: datetime
) -> dict[str, Any]:
    """Apply an operator action with its audit row (and the on-call webhook for a resolve), committed."""
    with conn.transaction():
        row = apply(conn, alert_id, action, now)
        if action.op is Op.RESOLVE and cfg.webhook_url:
            payload = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
            effects.enqueue_webhook(conn, alert_id, "resolved", payload, now)
    return row
