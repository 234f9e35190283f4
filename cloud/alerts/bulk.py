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

from cloud.alerts import effects, store
from cloud.alerts.config import AlertConfig
from cloud.alerts.decision import Action, AlertDecision
from cloud.alerts.device_params import PARAMS_INPUTS, params_of_rows
from cloud.alerts.inputs import DeviceProfile, SessionRecord
from cloud.alerts.params import RuleId, RuleParams
from cloud.alerts.store import (
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

Key = tuple[str, str]  # (device_id, session_id)

IN_IDS = "any(array(select jsonb_array_elements_text(%s::jsonb)))"  # the batch's device ids, as json
LOCK = (
    "insert into alert_devices (device_id, first_seen) "
    "select d, f from jsonb_to_recordset(%s::jsonb) as u(d text, f timestamptz) order by d "
    "on conflict (device_id) do update set first_seen = least(alert_devices.first_seen, excluded.first_seen) "
    "returning device_id, first_seen"
)
OPEN = (
    "select device_id, rule_id, episode_key, severity::text from alerts "
    f"where device_id = {IN_IDS} and state <> 'resolved'"
)
STATES = (
    "select s.device_id, s.session_id, s.tz_offset_min, s.state::text, s.events::text "
    "from alert_session_state s join jsonb_to_recordset(%s::jsonb) as k(d text, s text) "
    "on s.device_id = k.d and s.session_id = k.s"
)
ENDED = (
    "select h.device_id, h.session_id from alert_history h "
    "join jsonb_to_recordset(%s::jsonb) as k(d text, s text) on h.device_id = k.d and h.session_id = k.s"
)
HISTORY = f"select device_id, record::text from alert_history where device_id = {IN_IDS} and started_at >= %s"
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
    params: dict[str, RuleParams]  # every device: model, active protocol, overrides (device_params.py)


def load(
    conn: Conn, firsts: Mapping[str, datetime], keys: Iterable[Key], ending: list[str], since: datetime
) -> Loaded:
    """Lock the batch's devices and read their state: one pipelined round trip (plus BEGIN)."""
    ids = sorted(firsts)
    ks = js([{"d": d, "s": s} for d, s in sorted(set(keys))]) if keys else None
    ids_array = js(ids)  # json, not a list: psycopg escapes list items one by one (seen in the profile)
    with conn.pipeline():  # statements run in order: the locks are taken before any state is read
        c_lock = conn.execute(LOCK, (js([{"d": d, "f": firsts[d]} for d in ids]),))
        c_open = conn.execute(OPEN, (ids_array,))
        c_prof = conn.execute(
            PROFILE_SELECT + f" where p.device_id = {IN_IDS}",
            (ids_array,),
        )
        c_params = conn.execute(PARAMS_INPUTS, (ids_array,))
        c_live = conn.execute(STATES, (ks,)) if ks else None
        c_done = conn.execute(ENDED, (ks,)) if ks else None
        c_hist = conn.execute(HISTORY, (js(ending), since)) if ending else None
    opened: dict[str, OpenMap] = {}
    for dev, rule, key, sev in c_open.fetchall():
        opened.setdefault(dev, {})[(RuleId(rule), key)] = SEVERITY_OF[sev]
    profiles = {r[0]: profile_of_row(r) for r in c_prof.fetchall()}
    inputs = c_params.fetchall()  # one row per device of the batch
    for dev, model, *_layers in inputs:  # not registered (yet): no flags, the model from ingest's table
        if dev not in profiles and model is not None:
            profiles[dev] = ProfileRow(DeviceProfile(device_id=dev, model=model), None, model)
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
        params=params_of_rows(inputs),
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


RAISE_MANY = (
    """
insert into alerts as a (device_id, rule_id, episode_key, severity, state, blocking, count, first_seen,
                         last_seen, message, notice_text, evidence)
select u.dev, u.rule, u.key, u.sev::alert_severity, 'open', u.blocking, 1, %(now)s, %(now)s, u.message,
       u.notice, u.evidence
from jsonb_to_recordset(%(rows)s::jsonb) as u(dev text, rule text, key text, sev text, blocking bool,
                                              message text, notice text, evidence jsonb)"""
    + store.MERGE_OPEN_ALERT
    + "returning a.device_id, a.rule_id, a.episode_key, a.id, (a.xmax = 0), a.severity::text, a.state\n"
)
CLEAR_MANY = """
update alerts a set state = 'resolved', resolved_at = %(now)s, resolved_by = 'rule', resolution = old.message,
       last_seen = greatest(a.last_seen, %(now)s)
from (select al.id, al.state, u.message from alerts al
      join jsonb_to_recordset(%(rows)s::jsonb) as u(dev text, rule text, key text, message text)
      on al.device_id = u.dev and al.rule_id = u.rule and al.episode_key = u.key and al.state <> 'resolved'
      order by al.id for update of al) old
where a.id = old.id
returning a.device_id, a.rule_id, a.episode_key, a.id, old.state, a.severity::text
"""
AUDIT_MANY = (
    "insert into alert_transitions (alert_id, from_state, to_state, severity, at, actor, reason) "
    "select i, f, t, s::alert_severity, %s, 'rule', r "
    "from jsonb_to_recordset(%s::jsonb) as u(i bigint, f text, t text, s text, r text)"
)


def waves(decisions: list[AlertDecision]) -> list[list[AlertDecision]]:
    """Split decisions so no episode appears twice in one wave, keeping each episode's order: wave i
    holds the i-th decision of every episode (one set-based statement may touch a row only once)."""
    out: list[list[AlertDecision]] = []
    seen: dict[tuple[str, str, str], int] = {}
    for d in decisions:
        k = (d.device_id, d.rule_id.value, d.episode_key)
        i = seen[k] = seen.get(k, -1) + 1
        if i == len(out):
            out.append([])
        out[i].append(d)
    return out


def apply_decisions(
    conn: Conn, decisions: list[AlertDecision], before: Mapping[str, OpenMap], now: datetime
) -> tuple[list[Applied], list[dict[str, Any]]]:
    """Upsert the raises and resolve the clears set-based (one round trip per wave, almost always one);
    returns the applied decisions and their audit rows."""
    applied: list[Applied] = []
    audits: list[dict[str, Any]] = []
    for wave in waves(decisions):
        raises = [d for d in wave if d.action is not Action.CLEAR]
        clears = [d for d in wave if d.action is Action.CLEAR]
        with conn.pipeline():
            c_clear = (
                conn.execute(CLEAR_MANY, {"now": now, "rows": js([_row(d) for d in clears])})
                if clears
                else None
            )
            c_raise = (
                conn.execute(RAISE_MANY, {"now": now, "rows": js([_row(d) for d in raises])})
                if raises
                else None
            )
        cleared = {(r[0], r[1], r[2]): r[3:] for r in c_clear.fetchall()} if c_clear else {}
        raised = {(r[0], r[1], r[2]): r[3:] for r in c_raise.fetchall()} if c_raise else {}
        for d in wave:  # in the decisions' order: the audit trail reads like the telemetry
            k = (d.device_id, d.rule_id.value, d.episode_key)
            if d.action is Action.CLEAR:
                if k not in cleared:
                    continue  # nothing open to clear
                alert_id, old_state, sev = cleared[k]
                audits.append({"i": alert_id, "f": old_state, "t": "resolved", "s": sev, "r": d.message})
                applied.append(Applied(alert_id, d, False, False, True, old_state))
                continue
            alert_id, inserted, sev, state = raised[k]
            prev = before.get(d.device_id, {}).get((d.rule_id, d.episode_key))
            escalated = not inserted and prev is not None and SEVERITY_OF[sev] > prev
            if inserted:
                audits.append({"i": alert_id, "f": None, "t": "open", "s": sev, "r": d.message})
            elif escalated:
                audits.append(
                    {"i": alert_id, "f": state, "t": state, "s": sev, "r": f"severity raised: {d.message}"}
                )
            applied.append(
                Applied(alert_id, d, bool(inserted), escalated, False, None if inserted else state)
            )
    return applied, audits


def _row(d: AlertDecision) -> dict[str, Any]:
    return {
        "dev": d.device_id,
        "rule": d.rule_id.value,
        "key": d.episode_key,
        "sev": SEVERITY_NAME[d.severity],
        "blocking": d.blocking,
        "message": d.message,
        "notice": d.notice_text,
        "evidence": d.evidence,
    }


def write(
    conn: Conn, cfg: AlertConfig, p: Pending, profiles: dict[str, ProfileRow], now: datetime
) -> tuple[list[Applied], int]:
    """Every write of `p`, one statement per table; returns the applied decisions and notices queued.

    Only the alert upserts wait for their answer; the rest is queued (in the caller's pipeline, it goes
    out with the COMMIT)."""
    applied, audits = apply_decisions(conn, p.decisions, p.before, now)
    if audits:
        conn.execute(AUDIT_MANY, (now, js(audits)))
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
