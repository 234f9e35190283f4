"""The engine's set-based SQL for one batch: every read in one pipelined round trip, every write as one
statement per table (unnest arrays), sent in the same pipeline as the COMMIT.

Profiling the per-device version (py-spy, bench/alerts.py at 5,000 msg/s) showed the engine thread ~75 %
waiting on PostgreSQL round trips: a SAVEPOINT/RELEASE pair per device, one INSERT per ended session,
one SELECT per kind of state. Here the number of round trips per batch no longer grows with its devices:
read (BEGIN + 7 queries), the alert upserts when there are decisions (their ids feed the audit and the
notices), then every other write with the COMMIT.

`Pending` is what the pure fold of one device produced; the engine merges the devices' `Pending` into
one for the fast path, or writes each in its own savepoint when a batch must be isolated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cloud.alerts import effects
from cloud.alerts.config import AlertConfig
from cloud.alerts.decision import Action, AlertDecision
from cloud.alerts.inputs import DeviceProfile, SessionRecord
from cloud.alerts.params import RuleId
from cloud.alerts.store import (
    AUDIT,
    CLEAR,
    PROFILE_SELECT,
    SEVERITY_NAME,
    SEVERITY_OF,
    Applied,
    Conn,
    LiveSession,
    OpenMap,
    ProfileRow,
    decode_record,
    js,
    profile_of_row,
    session_of_row,
)
from cloud.alerts.store import UPSERT as UPSERT_ALERT

Key = tuple[str, str]  # (device_id, session_id)

LOCK = (
    "insert into alert_devices (device_id, first_seen) "
    "select d, f from unnest(%s::text[], %s::timestamptz[]) as u(d, f) order by d "
    "on conflict (device_id) do update set first_seen = least(alert_devices.first_seen, excluded.first_seen) "
    "returning device_id, first_seen"
)
OPEN = (
    "select device_id, rule_id, episode_key, severity::text from alerts "
    "where device_id = any(%s) and state <> 'resolved'"
)
MODELS = "select device_id, model from devices where device_id = any(%s)"
STATES = (
    "select s.device_id, s.session_id, s.tz_offset_min, s.state::text, s.events::text "
    "from alert_session_state s join unnest(%s::text[], %s::text[]) as k(d, s) "
    "on s.device_id = k.d and s.session_id = k.s"
)
ENDED = (
    "select h.device_id, h.session_id from alert_history h "
    "join unnest(%s::text[], %s::text[]) as k(d, s) on h.device_id = k.d and h.session_id = k.s"
)
HISTORY = "select device_id, record::text from alert_history where device_id = any(%s) and started_at >= %s"
# The rows of the two big writes travel as ONE json document (encoded in C by msgspec, nested states
# included) rather than as jsonb[] arrays: psycopg escapes every array element in Python, which was a
# quarter of the engine thread's time in the profile.
SAVE_HISTORY = (
    "insert into alert_history (device_id, session_id, started_at, record) "
    "select d, s, (r->>'started_at')::timestamptz, r from jsonb_to_recordset(%s::jsonb) as u(d text, s text, r jsonb) "
    "on conflict (device_id, session_id) do update set record = excluded.record"
)
SAVE_STATES = (
    "insert into alert_session_state (device_id, session_id, tz_offset_min, state, events, updated_at) "
    "select d, s, tz, st, ev, %s from jsonb_to_recordset(%s::jsonb) as u(d text, s text, tz int, st jsonb, ev jsonb) "
    "on conflict (device_id, session_id) do update set "
    "tz_offset_min = excluded.tz_offset_min, state = excluded.state, events = excluded.events, "
    "updated_at = excluded.updated_at"
)
DROP_STATES = (
    "delete from alert_session_state s using unnest(%s::text[], %s::text[]) as k(d, s) "
    "where s.device_id = k.d and s.session_id = k.s"
)
MARK = {
    col: f"update notice_outbox n set {col} = coalesce(n.{col}, u.at) "
    "from unnest(%s::text[], %s::timestamptz[]) as u(id, at) where n.notice_id = u.id"
    for col in ("shown_at", "acked_at")
}


@dataclass
class Loaded:
    """Everything the fold reads, for every device of the batch (devices locked, in sorted order)."""

    first_seen: dict[str, datetime]
    opened: dict[str, OpenMap]
    profiles: dict[str, ProfileRow]
    live: dict[Key, LiveSession]
    done_before: set[Key]  # sessions of the batch that had already ended (in alert_history)
    past: dict[str, list[SessionRecord]]


def load(
    conn: Conn, firsts: Mapping[str, datetime], keys: Iterable[Key], ending: list[str], since: datetime
) -> Loaded:
    """Lock the batch's devices and read their state: one pipelined round trip (plus BEGIN)."""
    ids = sorted(firsts)
    ks = sorted(set(keys))
    kd, kss = [k[0] for k in ks], [k[1] for k in ks]
    with conn.pipeline():  # statements run in order: the locks are taken before any state is read
        c_lock = conn.execute(LOCK, (ids, [firsts[d] for d in ids]))
        c_open = conn.execute(OPEN, (ids,))
        c_prof = conn.execute(PROFILE_SELECT + " where p.device_id = any(%s)", (ids,))
        c_model = conn.execute(MODELS, (ids,))
        c_live = conn.execute(STATES, (kd, kss)) if ks else None
        c_done = conn.execute(ENDED, (kd, kss)) if ks else None
        c_hist = conn.execute(HISTORY, (ending, since)) if ending else None
    opened: dict[str, OpenMap] = {}
    for dev, rule, key, sev in c_open.fetchall():
        opened.setdefault(dev, {})[(RuleId(rule), key)] = SEVERITY_OF[sev]
    profiles = {r[0]: profile_of_row(r) for r in c_prof.fetchall()}
    for dev, model in c_model.fetchall():  # not registered (yet): no flags, the model from ingest's table
        if dev not in profiles:
            profiles[dev] = ProfileRow(DeviceProfile(device_id=dev, model=model or ""), None, model or "")
    live = dict(session_of_row(r) for r in c_live.fetchall()) if c_live else {}
    done = {(d, s) for d, s in c_done.fetchall()} if c_done else set()
    past: dict[str, list[SessionRecord]] = {}
    for dev, rec in c_hist.fetchall() if c_hist else ():
        past.setdefault(dev, []).append(decode_record(rec))
    return Loaded(
        first_seen={r[0]: r[1] for r in c_lock.fetchall()},
        opened=opened,
        profiles=profiles,
        live=live,
        done_before={k for k in done if k not in live},
        past=past,
    )


@dataclass
class Pending:
    """Writes produced by folding one device's messages (or, merged, a whole batch's)."""

    decisions: list[AlertDecision] = field(default_factory=list)
    before: dict[str, OpenMap] = field(default_factory=dict)  # open alerts of each device at batch start
    times: dict[tuple[str, str, str], datetime] = field(default_factory=dict)  # episode -> telemetry time
    history: dict[Key, SessionRecord] = field(default_factory=dict)
    marks: dict[tuple[str, str], datetime] = field(default_factory=dict)  # (column, notice_id) -> at
    states: dict[Key, LiveSession] = field(default_factory=dict)
    drops: list[Key] = field(default_factory=list)

    def mark(self, notice_id: str, column: str, at: datetime) -> None:
        assert column in MARK
        self.marks.setdefault((column, notice_id), at)  # the first one wins, as coalesce would

    def merge(self, other: Pending) -> None:
        self.decisions += other.decisions
        self.before.update(other.before)
        self.times.update(other.times)
        self.history.update(other.history)
        for (col, nid), at in other.marks.items():
            self.marks.setdefault((col, nid), at)
        self.states.update(other.states)
        self.drops += other.drops


def apply_decisions(
    conn: Conn, decisions: list[AlertDecision], before: Mapping[str, OpenMap], now: datetime
) -> tuple[list[Applied], list[tuple[Any, ...]]]:
    """Upsert the raises and resolve the clears in one round trip; returns them and their audit rows."""
    if not decisions:
        return [], []
    with conn.pipeline():  # in order: a raise then a clear of one episode in a batch still nets out
        curs = [
            conn.execute(CLEAR if d.action is Action.CLEAR else UPSERT_ALERT, _args(d, now))
            for d in decisions
        ]
    applied: list[Applied] = []
    audits: list[tuple[Any, ...]] = []
    for d, cur in zip(decisions, curs, strict=True):
        row = cur.fetchone()
        if d.action is Action.CLEAR:
            if row is None:
                continue
            audits.append((row[0], row[1], "resolved", row[2], now, "rule", d.message))
            applied.append(Applied(row[0], d, False, False, True, row[1]))
            continue
        assert row is not None
        alert_id, inserted, sev, state = row
        prev = before.get(d.device_id, {}).get((d.rule_id, d.episode_key))
        escalated = not inserted and prev is not None and SEVERITY_OF[sev] > prev
        if inserted:
            audits.append((alert_id, None, "open", sev, now, "rule", d.message))
        elif escalated:
            audits.append((alert_id, state, state, sev, now, "rule", f"severity raised: {d.message}"))
        applied.append(Applied(alert_id, d, bool(inserted), escalated, False, None if inserted else state))
    return applied, audits


def _args(d: AlertDecision, now: datetime) -> dict[str, Any]:
    return {
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


def write(
    conn: Conn, cfg: AlertConfig, p: Pending, profiles: dict[str, ProfileRow], now: datetime
) -> tuple[list[Applied], int]:
    """Every write of `p`, one statement per table; returns the applied decisions and notices queued.

    Only the alert upserts wait for their answer; the rest is queued (in the caller's pipeline, it goes
    out with the COMMIT)."""
    applied, audits = apply_decisions(conn, p.decisions, p.before, now)
    if audits:
        with conn.cursor() as cur:
            cur.executemany(AUDIT, audits)
    if p.history:
        hs = [{"d": d, "s": s, "r": r} for (d, s), r in sorted(p.history.items())]
        conn.execute(SAVE_HISTORY, (js(hs),))
    if p.states:
        ss = [
            {"d": d, "s": s, "tz": v.tz_offset_min, "st": v.state, "ev": v.events}
            for (d, s), v in sorted(p.states.items())
        ]
        conn.execute(SAVE_STATES, (now, js(ss)))
    if p.drops:
        ds = sorted(set(p.drops))
        conn.execute(DROP_STATES, ([k[0] for k in ds], [k[1] for k in ds]))
    for col, sql in MARK.items():
        ms = sorted((nid, at) for (c, nid), at in p.marks.items() if c == col)
        if ms:
            conn.execute(sql, ([m[0] for m in ms], [m[1] for m in ms]))
    episode_time = {
        a.alert_id: p.times.get((a.decision.device_id, a.decision.rule_id.value, a.decision.episode_key), now)
        for a in applied
    }
    return applied, effects.route(conn, cfg, applied, profiles, now, episode_time)
