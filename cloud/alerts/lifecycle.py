"""The alert lifecycle: a pure transition table, and the SQL that applies an operator's action with audit.

States: open -> acknowledged -> resolved, with snoozed on the side (until a time; the timer reopens it).
A rule's clear resolves an alert from any live state; a severity rise reopens an acknowledged or snoozed
one (ops must look again). Every change writes one `alert_transitions` row: from, to, when, who, why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.rows import dict_row


class State(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    SNOOZED = "snoozed"
    RESOLVED = "resolved"


class Op(StrEnum):
    ACK = "ack"
    RESOLVE = "resolve"
    SNOOZE = "snooze"
    WAKE = "wake"  # the snooze time has passed
    REOPEN = "reopen"  # the severity rose


class LifecycleError(ValueError):
    """The action does not apply to the alert in its current state (or the alert does not exist)."""


TRANSITIONS: dict[tuple[State, Op], State] = {
    (State.OPEN, Op.ACK): State.ACKNOWLEDGED,
    (State.OPEN, Op.RESOLVE): State.RESOLVED,
    (State.OPEN, Op.SNOOZE): State.SNOOZED,
    (State.ACKNOWLEDGED, Op.RESOLVE): State.RESOLVED,
    (State.ACKNOWLEDGED, Op.SNOOZE): State.SNOOZED,
    (State.ACKNOWLEDGED, Op.REOPEN): State.OPEN,
    (State.SNOOZED, Op.ACK): State.ACKNOWLEDGED,
    (State.SNOOZED, Op.RESOLVE): State.RESOLVED,
    (State.SNOOZED, Op.SNOOZE): State.SNOOZED,
    (State.SNOOZED, Op.WAKE): State.OPEN,
    (State.SNOOZED, Op.REOPEN): State.OPEN,
}


def next_state(current: State, op: Op) -> State:
    try:
        return TRANSITIONS[(current, op)]
    except KeyError:
        allowed = sorted(o.value for (s, o) in TRANSITIONS if s is current)
        hint = f"allowed now: {', '.join(allowed)}" if allowed else "a resolved alert is final"
        raise LifecycleError(f"cannot {op.value} an alert that is {current.value} ({hint})") from None


@dataclass(frozen=True, slots=True)
class Action:
    op: Op
    actor: str
    reason: str
    until: datetime | None = None  # SNOOZE only


ALERT_COLUMNS = (
    "id, device_id, rule_id, episode_key, severity::text as severity, state, blocking, count, first_seen, "
    "last_seen, message, notice_text, evidence, snoozed_until, acknowledged_at, acknowledged_by, "
    "resolved_at, resolved_by, resolution"
)

AUDIT = (
    "insert into alert_transitions (alert_id, from_state, to_state, severity, at, actor, reason) "
    "values (%s, %s, %s, %s::alert_severity, %s, %s, %s)"
)


LOCK_ALERT = "select state, severity::text as severity from alerts where id = %s for update"


def planned_update(
    alert_id: int, action: Action, current: State, now: datetime
) -> tuple[State, str, dict[str, Any]]:
    """The new state of an alert after `action`, and the UPDATE (SQL, parameters) that records it, with who
    and when. Raises LifecycleError when the transition is not allowed. Shared by the CLI and the API."""
    new = next_state(current, action.op)
    sets: dict[str, Any] = {"state": new.value}
    if action.op is Op.ACK:
        sets |= {"acknowledged_at": now, "acknowledged_by": action.actor}
    elif action.op is Op.RESOLVE:
        sets |= {"resolved_at": now, "resolved_by": action.actor, "resolution": action.reason}
    elif action.op is Op.SNOOZE:
        sets |= {"snoozed_until": action.until}
    elif action.op is Op.WAKE:
        sets |= {"snoozed_until": None}
    assignments = ", ".join(f"{k} = %({k})s" for k in sets)
    return new, f"update alerts set {assignments} where id = %(id)s", {**sets, "id": alert_id}


def apply(conn: psycopg.Connection[Any], alert_id: int, action: Action, now: datetime) -> dict[str, Any]:
    """Apply an operator's (or the timer's) action in the caller's transaction; returns the new row."""
    if action.op is Op.SNOOZE and (action.until is None or action.until <= now):
        raise LifecycleError("snooze needs a time in the future (--until 2024-05-06T09:00:00+00:00)")
    if not action.actor.strip():
        raise LifecycleError("say who you are (--by <name>): every transition is audited")
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(LOCK_ALERT, (alert_id,)).fetchone()
    if row is None:
        raise LifecycleError(f"no alert {alert_id}: list them with `microfleet alerts list`")
    current = State(row["state"])
    new, update, params = planned_update(alert_id, action, current, now)
    out = cur.execute(f"{update} returning {ALERT_COLUMNS}", params).fetchone()
    assert out is not None
    conn.execute(
        AUDIT, (alert_id, current.value, new.value, row["severity"], now, action.actor, action.reason)
    )
    return out


def wake_snoozed(conn: psycopg.Connection[Any], now: datetime) -> list[int]:
    """Reopen every snoozed alert whose time has come (the timer's job); returns their ids."""
    ids = [
        int(r[0])
        for r in conn.execute(
            "select id from alerts where state = 'snoozed' and snoozed_until <= %s "
            "order by id for update skip locked",
            (now,),
        ).fetchall()
    ]
    for alert_id in ids:
        apply(conn, alert_id, Action(Op.WAKE, "engine", "snooze expired"), now)
    return ids
