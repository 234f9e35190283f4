"""The engine's SQL, in the caller's transaction: device locks, state, history, and the alert upsert.

Concurrency: `lock_devices` upserts the batch's devices into `alert_devices` in sorted order, which takes
their row locks in one order (no deadlock), so two engines never interleave on one device's state; and
the alert upsert's conflict target is the partial unique index of open alerts, so even without the lock
two engines could not open the same episode twice (the second merges: count + 1, greatest severity).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import psycopg

from cloud.alerts.decision import AlertDecision
from cloud.alerts.inputs import Contraindications, DeviceProfile, SessionRecord
from cloud.alerts.insession import SessionState
from cloud.alerts.params import RuleId, Severity
from contract.messages import DeviceEvent

Conn = psycopg.Connection[Any]
OpenMap = dict[tuple[RuleId, str], Severity]
SEVERITY_NAME = {s: s.name.lower() for s in Severity}
SEVERITY_OF = {v: k for k, v in SEVERITY_NAME.items()}
_events = msgspec.json.Decoder(list[DeviceEvent])
_state = msgspec.json.Decoder(SessionState)
_record = msgspec.json.Decoder(SessionRecord)


def js(value: object) -> str:
    return msgspec.json.encode(value).decode()


def lock_devices(conn: Conn, first_seen: Mapping[str, datetime]) -> dict[str, datetime]:
    """Lock the devices' rows (sorted) for this transaction; returns each device's first-seen time."""
    ids = sorted(first_seen)
    rows = conn.execute(
        "insert into alert_devices (device_id, first_seen) "
        "select d, f from unnest(%s::text[], %s::timestamptz[]) as u(d, f) order by d "
        "on conflict (device_id) do update set first_seen = least(alert_devices.first_seen, excluded.first_seen) "
        "returning device_id, first_seen",
        (ids, [first_seen[d] for d in ids]),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def open_alerts(conn: Conn, device_ids: Iterable[str]) -> dict[str, OpenMap]:
    out: dict[str, OpenMap] = {}
    for dev, rule, key, sev in conn.execute(
        "select device_id, rule_id, episode_key, severity::text from alerts "
        "where device_id = any(%s) and state <> 'resolved'",
        (list(device_ids),),
    ):
        out.setdefault(dev, {})[(RuleId(rule), key)] = SEVERITY_OF[sev]
    return out


@dataclass(frozen=True, slots=True)
class ProfileRow:
    profile: DeviceProfile
    tz_name: str | None
    model: str


FLAG_COLUMNS = (
    "pregnancy",
    "implanted_electronics",
    "epilepsy",
    "active_cancer",
    "under_18",
    "recent_surgery",
    "metal_implants",
    "diabetes",
)
PROFILE_SELECT = (
    "select p.device_id, p.tz_name, p.tz_offset_min, p.birth_date, p.last_surgery_on, "
    "p.thyroid_condition or p.neck_contraindication, d.model, "
    + ", ".join(f"p.{c}" for c in FLAG_COLUMNS)
    + " from device_profiles p left join devices d on d.device_id = p.device_id"
)


def profile_of_row(row: tuple[Any, ...]) -> ProfileRow:
    dev, tz_name, tz_off, birth, surgery, neck, model, *flags = row
    named = dict(zip(FLAG_COLUMNS, flags, strict=True))
    c = Contraindications(
        pregnancy=named["pregnancy"],
        implanted_electronics=named["implanted_electronics"],
        epilepsy=named["epilepsy"],
        active_cancer=named["active_cancer"],
        under_18=named["under_18"],
        recent_surgery=named["recent_surgery"],
        metal_implants=named["metal_implants"],
        diabetes=named["diabetes"],
        birth_date=birth,
        last_surgery_on=surgery,
        neck_contraindicated=bool(neck),
    )
    prof = DeviceProfile(device_id=dev, model=model or "", tz_offset_min=tz_off or 0, contraindications=c)
    return ProfileRow(prof, tz_name, model or "")


@dataclass
class LiveSession:
    state: SessionState
    tz_offset_min: int
    events: list[DeviceEvent]


def session_of_row(row: tuple[Any, ...]) -> tuple[tuple[str, str], LiveSession]:
    d, s, tz, st, ev = row
    return (d, s), LiveSession(_state.decode(st), tz, _events.decode(ev))


def decode_record(text: str) -> SessionRecord:
    return _record.decode(text)


@dataclass(frozen=True, slots=True)
class Applied:
    alert_id: int
    decision: AlertDecision
    opened: bool  # a new alert row
    escalated: bool  # an open alert's severity rose
    resolved: bool  # a clear resolved it
    previous_state: str | None


# One open alert per device, rule and episode (the partial unique index): a repeat merges into it, a rise
# in severity reopens an acknowledged or snoozed one. Shared by the single and the set-based upserts.
MERGE_OPEN_ALERT = """
on conflict (device_id, rule_id, episode_key) where state <> 'resolved' do update set
    count = a.count + 1,
    last_seen = greatest(a.last_seen, excluded.last_seen),
    severity = greatest(a.severity, excluded.severity),
    blocking = a.blocking or excluded.blocking,
    message = case when excluded.severity > a.severity then excluded.message else a.message end,
    evidence = case when excluded.severity >= a.severity then excluded.evidence else a.evidence end,
    state = case when excluded.severity > a.severity and a.state in ('acknowledged', 'snoozed')
                 then 'open' else a.state end
"""
UPSERT = (
    """
insert into alerts as a (device_id, rule_id, episode_key, severity, state, blocking, count, first_seen,
                         last_seen, message, notice_text, evidence)
values (%(dev)s, %(rule)s, %(key)s, %(sev)s::alert_severity, 'open', %(blocking)s, 1, %(now)s, %(now)s,
        %(message)s, %(notice)s, %(evidence)s::jsonb)"""
    + MERGE_OPEN_ALERT
    + "returning id, (xmax = 0) as inserted, severity::text, state\n"
)
CLEAR = """
update alerts a set state = 'resolved', resolved_at = %(now)s, resolved_by = 'rule', resolution = %(message)s,
       last_seen = greatest(a.last_seen, %(now)s)
from (select id, state from alerts where device_id = %(dev)s and rule_id = %(rule)s and episode_key = %(key)s
      and state <> 'resolved' for update) old
where a.id = old.id
returning a.id, old.state, a.severity::text
"""
AUDIT = (
    "insert into alert_transitions (alert_id, from_state, to_state, severity, at, actor, reason) "
    "values (%s, %s, %s, %s::alert_severity, %s, %s, %s)"
)


def apply_decision(conn: Conn, d: AlertDecision, before: OpenMap, now: datetime) -> Applied | None:
    """Upsert a raise or resolve a clear, with its audit row; None if a clear found nothing open."""
    args = {
        "dev": d.device_id,
        "rule": d.rule_id.value,
        "key": d.episode_key,
        "sev": SEVERITY_NAME[d.severity],
        "blocking": d.blocking,
        "now": now,
        "message": d.message,
        "notice": d.notice_text,
        "evidence": js(d.evidence),
    }
    if d.action == "clear":
        row = conn.execute(CLEAR, args).fetchone()
        if row is None:
            return None
        conn.execute(AUDIT, (row[0], row[1], "resolved", row[2], now, "rule", d.message))
        return Applied(row[0], d, False, False, True, row[1])
    row = conn.execute(UPSERT, args).fetchone()
    assert row is not None
    alert_id, inserted, sev, state = row
    prev = before.get((d.rule_id, d.episode_key))
    escalated = not inserted and prev is not None and SEVERITY_OF[sev] > prev
    if inserted:
        conn.execute(AUDIT, (alert_id, None, "open", sev, now, "rule", d.message))
    elif escalated:
        conn.execute(AUDIT, (alert_id, state, state, sev, now, "rule", f"severity raised: {d.message}"))
    return Applied(alert_id, d, bool(inserted), escalated, False, None if inserted else state)
