"""What an applied decision causes, written in the same transaction: a device notice (held through
quiet hours unless critical), an on-call webhook delivery, and the device's safety gate.

All three are outboxes: the delivery and webhook workers send them after the commit, so a crash
between commit and send loses nothing (the row is still unsent) and a resend is harmless (the notice
id is stable; the on-call tool dedups on the alert id and event).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from cloud.alerts.config import AlertConfig
from cloud.alerts.params import RuleId
from cloud.alerts.quiet import release_at, user_tz
from cloud.alerts.store import SEVERITY_NAME, Applied, Conn, ProfileRow, js

NOTIFY_CHANNEL = "mf_alerts"
NOTIFY_CHUNK = 100  # a NOTIFY payload must stay under 8000 bytes
GATE_TEXT = "Sessions are paused for your safety: please see a doctor before using the device."


def notice_id(alert_id: int, severity_name: str) -> str:
    return f"alert-{alert_id}-{severity_name}"


NOTICE_INSERT = (  # the rows as one json document: one statement for a whole batch's notices
    "insert into notice_outbox (notice_id, alert_id, device_id, severity, rule_id, text, created_at, "
    "release_at, expires_at) select n, a, d, s::alert_severity, r, t, %s, rel, exp from jsonb_to_recordset(%s::jsonb) "
    "as u(n text, a bigint, d text, s text, r text, t text, rel timestamptz, exp timestamptz) "
    "on conflict (notice_id) do nothing"
)


def notice_row(cfg: AlertConfig, a: Applied, profile: ProfileRow | None, now: datetime) -> dict[str, Any]:
    """The notice_outbox row of an applied decision (held until quiet hours end unless critical)."""
    d = a.decision
    tz = user_tz(profile.tz_name if profile else None, profile.profile.tz_offset_min if profile else 0)
    release = release_at(now, d.severity, tz, cfg.quiet_start, cfg.quiet_end)
    sev = SEVERITY_NAME[d.severity]
    return {
        "n": notice_id(a.alert_id, sev),
        "a": a.alert_id,
        "d": d.device_id,
        "s": sev,
        "r": d.rule_id.value,
        "t": d.notice_text,
        "rel": release,
        "exp": release + timedelta(seconds=cfg.notice_ttl_s),
    }


def webhook_event(a: Applied) -> str | None:
    return "opened" if a.opened else "escalated" if a.escalated else "resolved" if a.resolved else None


def enqueue_webhook(conn: Conn, alert_id: int, event: str, payload: dict[str, Any], now: datetime) -> None:
    conn.execute(
        "insert into webhook_deliveries (alert_id, event, payload, created_at, next_attempt_at) "
        "values (%s, %s, %s::jsonb, %s, %s)",
        (alert_id, event, js({"event": event, "alert": payload}), now, now),
    )


def alert_payload(a: Applied, now: datetime) -> dict[str, Any]:
    d = a.decision
    return {
        "id": a.alert_id,
        "device_id": d.device_id,
        "rule_id": d.rule_id.value,
        "episode_key": d.episode_key,
        "severity": SEVERITY_NAME[d.severity],
        "state": "resolved" if a.resolved else "open",
        "blocking": d.blocking,
        "message": d.message,
        "evidence": d.evidence,
        "at": now.isoformat(),
    }


def set_gate(conn: Conn, device_id: str, reasons: Sequence[str], now: datetime) -> bool:
    """The device's desired gate; bumps its version (so the delivery worker publishes it) on a change."""
    blocked = bool(reasons)
    cur = conn.execute(
        "insert into safety_gates as g (device_id, blocked, reasons, text, updated_at) "
        "values (%s, %s, %s, %s, %s) on conflict (device_id) do update set blocked = excluded.blocked, "
        "reasons = excluded.reasons, text = excluded.text, version = g.version + 1, "
        "updated_at = excluded.updated_at "
        "where (g.blocked, g.reasons) is distinct from (excluded.blocked, excluded.reasons)",
        (device_id, blocked, sorted(reasons), GATE_TEXT if blocked else "", now),
    )
    return cur.rowcount == 1


def route(
    conn: Conn,
    cfg: AlertConfig,
    applied: Iterable[Applied],
    profiles: dict[str, ProfileRow],
    now: datetime,
    episode_time: dict[int, datetime] | None = None,
) -> int:
    """Notices and webhooks for applied decisions; returns the number of notices offered to the outbox
    (a notice id already there is skipped by the insert). New alerts are announced on the `mf_alerts`
    channel (NOTIFY is delivered at COMMIT: listeners learn of committed alerts only; the payload is a
    JSON list of [id, device_id, rule_id]). Nothing here reads a result, so in a pipeline every statement
    goes out with the COMMIT."""
    notices: list[dict[str, Any]] = []
    applied = list(applied)
    opened = [[a.alert_id, a.decision.device_id, a.decision.rule_id.value] for a in applied if a.opened]
    for i in range(0, len(opened), NOTIFY_CHUNK):
        conn.execute("select pg_notify(%s, %s)", (NOTIFY_CHANNEL, js(opened[i : i + NOTIFY_CHUNK])))
    for a in applied:
        event = webhook_event(a)
        if event is None:
            continue
        if cfg.webhook_url:
            enqueue_webhook(conn, a.alert_id, event, alert_payload(a, now), now)
        if a.resolved or a.decision.rule_id is RuleId.C1:
            continue  # C1 reaches the device as its retained safety gate
        at = (episode_time or {}).get(a.alert_id, now)
        if (now - at).total_seconds() > cfg.notice_max_age_s:
            continue  # a late upload of an old episode: ops see it, the user is not told about the past
        notices.append(notice_row(cfg, a, profiles.get(a.decision.device_id), now))
    if notices:
        conn.execute(NOTICE_INSERT, (now, js(notices)))
    return len(notices)
