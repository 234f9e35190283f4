"""Rules evaluated when a session ends, over the device's history: O2, O3, O4, O5, T2, T3, T4, T6.

The result depends only on the SET of sessions (DeviceHistory is keyed by session id and sorted), the
open alerts and `now`, never on the order sessions arrived in:
- day rules (O2, O3) re-evaluate the local day of the session that ended; counts only grow, so whichever
  session of a day arrives last sees the whole day;
- O4 looks at both neighbours of the session, so a late auto-off session still flags the restart after it;
- rolling rules (O5, T2, T3, T4) look at the window ending on the user's local "today" (from `now`), so a
  late session simply updates the current picture; these are the rules that clear, with hysteresis.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from statistics import median

from cloud.alerts.decision import (
    Action,
    AlertDecision,
    EvidenceValue,
    OpenAlerts,
    clear_if_open,
    raise_unless_open,
)
from cloud.alerts.inputs import DeviceHistory, DeviceProfile, SessionRecord, local_day
from cloud.alerts.params import Phase, RuleId, RuleParams, Severity
from contract.messages import EndReason, EventType, SessionEnd

ROLLING = "rolling"
STREAK = "streak-from-"


def evaluate_history(
    session_end: SessionEnd, history: DeviceHistory, profile: DeviceProfile, params: RuleParams, now: datetime
) -> list[AlertDecision]:
    """Decisions caused by `session_end`, given the device's history (which may already contain it)."""
    rec = history.get(session_end.session_id)
    if (
        rec is None
    ):  # the engine should add it with the tz of its SessionStart; the profile's tz is the fallback
        rec = SessionRecord.from_end(session_end, profile.tz_offset_min)
        history = history.with_session(rec)
    tz = history.sessions[-1].tz_offset_min if history.sessions else profile.tz_offset_min
    today = max(local_day(now, tz), rec.local_day)
    dev, p, op = profile.device_id, params, history.open_alerts
    out: list[AlertDecision] = []
    day = [r for r in history.sessions if r.local_day == rec.local_day]
    if p.o2.enabled:
        out += _o2(p, op, dev, rec.local_day, day)
    if p.o3.enabled:
        out += _o3(p, op, dev, rec.local_day, day)
    if p.o4.enabled:
        out += _o4(p, op, dev, rec, history.sessions)
    if p.o5.enabled:
        out += _o5(p, op, dev, history, today)
    if p.t2.enabled:
        out += _t2(p, op, dev, history, today)
    if p.t3.enabled:
        out += _t3(p, op, dev, history.sessions)
    if p.t4.enabled:
        out += _t4(p, op, dev, [r for r in history.sessions if (today - r.local_day).days < p.t4.window_days])
    if p.t6.enabled:
        out += _t6(p, op, dev, rec)
    return sorted(out, key=lambda d: (d.rule_id, d.episode_key, d.action))


# The rolling rules whose window ends on the user's local "today": as days pass without a session, the
# window slides and an open alert of theirs may no longer hold. T3 counts sessions, not days: it cannot.
SLIDING_RULES = (RuleId.O5, RuleId.T2, RuleId.T4)


def evaluate_sliding(
    history: DeviceHistory, profile: DeviceProfile, params: RuleParams, now: datetime
) -> list[AlertDecision]:
    """The clears of the sliding rules at `now`, with no new session (the engine's periodic sweep).

    Only clears: without a new session the device did nothing new to raise an alert for, and a raise
    found here would repeat what the last session end already decided. A user who takes a rest week
    sees the streak and the weekly-frequency alerts resolve by rule, not stay open until the next use."""
    tz = history.sessions[-1].tz_offset_min if history.sessions else profile.tz_offset_min
    today = local_day(now, tz)
    dev, p, op = profile.device_id, params, history.open_alerts
    out: list[AlertDecision] = []
    if p.o5.enabled:
        out += _o5(p, op, dev, history, today)
    if p.t2.enabled:
        out += _t2(p, op, dev, history, today)
    if p.t4.enabled:
        out += _t4(p, op, dev, [r for r in history.sessions if (today - r.local_day).days < p.t4.window_days])
    return sorted((d for d in out if d.action is Action.CLEAR), key=lambda d: (d.rule_id, d.episode_key))


Ev = dict[str, EvidenceValue]


def _o2(p: RuleParams, op: OpenAlerts, dev: str, d: date, day: list[SessionRecord]) -> list[AlertDecision]:
    total = sum(r.duration_active_s for r in day)
    ev: Ev = {"day": d.isoformat(), "active_s": total, "sessions": tuple(r.session_id for r in day)}
    sev = (
        Severity.ALERT
        if total > p.o2.alert_daily_s
        else Severity.WARNING
        if total > p.o2.warn_daily_s
        else None
    )
    if sev is None:
        return []
    return raise_unless_open(
        op, RuleId.O2, sev, dev, d.isoformat(), f"{total / 60:.1f} min active on {d}", ev
    )


def _o3(p: RuleParams, op: OpenAlerts, dev: str, d: date, day: list[SessionRecord]) -> list[AlertDecision]:
    n = len(day)
    sev = Severity.WARNING if n >= p.o3.warn_sessions else Severity.INFO if n >= p.o3.info_sessions else None
    if sev is None:
        return []
    ev: Ev = {"day": d.isoformat(), "sessions": tuple(r.session_id for r in day)}
    return raise_unless_open(op, RuleId.O3, sev, dev, d.isoformat(), f"{n} sessions on {d}", ev)


def _o4(
    p: RuleParams, op: OpenAlerts, dev: str, rec: SessionRecord, sessions: tuple[SessionRecord, ...]
) -> list[AlertDecision]:
    """A restart within the window after an auto-off, looked at from both sides of `rec` (a late auto-off
    session still flags the restart after it). Every pair is considered, not just the neighbours in start
    order: sessions that start at the same instant would otherwise make the result depend on arrival order."""
    pairs = [(s, rec) for s in sessions if s is not rec] + [(rec, s) for s in sessions if s is not rec]
    closest: dict[str, tuple[float, str, SessionRecord, SessionRecord]] = {}  # per restart: nearest auto-off
    for before, after in pairs:
        if before.end_reason is not EndReason.AUTO_TIMER:
            continue
        gap = (after.started_at - before.ended_at).total_seconds()
        if 0 <= gap < p.o4.restart_window_s:
            candidate = (gap, before.session_id, before, after)
            if after.session_id not in closest or candidate[:2] < closest[after.session_id][:2]:
                closest[after.session_id] = candidate
    out: list[AlertDecision] = []
    for gap, _, before, after in (closest[k] for k in sorted(closest)):
        ev: Ev = {"auto_off_session": before.session_id, "restart_session": after.session_id, "gap_s": gap}
        out += raise_unless_open(
            op,
            RuleId.O4,
            Severity.WARNING,
            dev,
            after.session_id,
            f"restarted {gap:.0f} s after the auto-off",
            ev,
        )
    return out


def _o5(p: RuleParams, op: OpenAlerts, dev: str, h: DeviceHistory, today: date) -> list[AlertDecision]:
    days = {r.local_day for r in h.sessions}
    tz = h.sessions[-1].tz_offset_min if h.sessions else 0
    age_days = (today - local_day(h.first_seen, tz)).days
    phase = p.o5.phase
    if phase is Phase.AUTO:
        phase = Phase.INTENSIVE if age_days < p.o5.intensive_days else Phase.MAINTENANCE
    limit = (
        p.o5.intensive_max_days_per_week if phase is Phase.INTENSIVE else p.o5.maintenance_max_days_per_week
    )
    used = sum(1 for k in range(7) if today - timedelta(days=k) in days)
    ev: Ev = {"phase": phase.value, "days_used_7d": used, "limit": limit}
    out: list[AlertDecision] = []
    if used > limit:
        out += raise_unless_open(
            op,
            RuleId.O5,
            Severity.INFO,
            dev,
            ROLLING,
            f"{used} days of use in the last 7 ({phase.value} phase, limit {limit})",
            ev,
        )
    elif used <= limit - p.o5.clear_margin_days:
        out += clear_if_open(op, RuleId.O5, dev, ROLLING, f"{used} days of use in the last 7", ev)
    # streak: the run of consecutive days of use that ends today or yesterday (no rest day yet)
    end = today if today in days else today - timedelta(days=1)
    start = end
    while start - timedelta(days=1) in days:
        start -= timedelta(days=1)
    run = (end - start).days + 1 if end in days else 0
    key = f"{STREAK}{start.isoformat()}"
    if run >= p.o5.streak_days:
        ev = {"streak_days": run, "from": start.isoformat()}
        out += raise_unless_open(
            op, RuleId.O5, Severity.WARNING, dev, key, f"{run} days in a row without rest", ev
        )
    for rule, k in sorted(op):  # a rest day ended the run, or a late session merged two runs into one
        if rule is RuleId.O5 and k.startswith(STREAK) and (k != key or run < p.o5.streak_days):
            out += clear_if_open(
                op,
                RuleId.O5,
                dev,
                k,
                "a rest day was taken (or the run was merged)",
                {"current_run_days": run},
            )
    return out


def _t2(p: RuleParams, op: OpenAlerts, dev: str, h: DeviceHistory, today: date) -> list[AlertDecision]:
    w = p.t2.window_days
    tz = h.sessions[-1].tz_offset_min if h.sessions else 0
    first = local_day(h.first_seen, tz)
    base = [float(r.level_max) for r in h.sessions if 0 <= (r.local_day - first).days < w]
    if h.baseline_level is not None:
        base = [h.baseline_level] * p.t2.min_sessions
    recent = [r for r in h.sessions if (today - r.local_day).days < w]
    if len(recent) < p.t2.min_sessions:  # too little recent use to judge: whatever crept up is not current
        return clear_if_open(
            op, RuleId.T2, dev, ROLLING, f"{len(recent)} sessions in {w} days", {"sessions_14d": len(recent)}
        )
    at_max = sum(1 for r in recent if r.level_max >= p.hw.max_level or r.boost_active_s > 0) / len(recent)
    creep = 0.0
    if len(base) >= p.t2.min_sessions and (today - first).days >= 2 * w - 1:
        creep = median(r.level_max for r in recent) - median(base)
    ev: Ev = {"creep_levels": creep, "max_or_boost_ratio": round(at_max, 3), "sessions_14d": len(recent)}
    if creep >= p.t2.creep_levels or at_max > p.t2.max_use_ratio:
        return raise_unless_open(
            op,
            RuleId.T2,
            Severity.WARNING,
            dev,
            ROLLING,
            f"median level +{creep:g} over the first {w} days; max/boost in {at_max:.0%}",
            ev,
        )
    if (
        creep < p.t2.creep_levels - p.t2.clear_margin_levels
        and at_max < p.t2.max_use_ratio - p.t2.clear_margin_ratio
    ):
        return clear_if_open(op, RuleId.T2, dev, ROLLING, "level back near the baseline", ev)
    return []


def max_fraction(r: SessionRecord, max_level: int) -> float:
    """Share of active time at the model's max level or in BOOST (from events when no figure is given)."""
    if r.duration_active_s <= 0:
        return 0.0
    at_max = r.time_at_max_s
    if at_max is None:
        changes = [e for e in r.events if e.event is EventType.LEVEL_CHANGE and e.level_to is not None]
        at_max = 0.0
        if len(changes) >= r.level_changes_up + r.level_changes_down:
            level, since = r.level_start, r.started_at
            for e in (*changes, None):
                until = r.ended_at if e is None else min(max(e.at, since), r.ended_at)
                if level >= max_level:
                    at_max += (until - since).total_seconds()
                if e is not None and e.level_to is not None:
                    level, since = e.level_to, until
            at_max *= r.duration_active_s / max((r.ended_at - r.started_at).total_seconds(), 1.0)
    return min(1.0, max(at_max, r.boost_active_s) / r.duration_active_s)


def _t3(p: RuleParams, op: OpenAlerts, dev: str, sessions: tuple[SessionRecord, ...]) -> list[AlertDecision]:
    if not sessions:
        return []
    fractions = [max_fraction(r, p.hw.max_level) for r in sessions]
    run = 0
    for f in reversed(fractions):
        if f <= p.t3.max_fraction:
            break
        run += 1
    ev: Ev = {"consecutive_sessions": run, "last_fraction": round(fractions[-1], 3)}
    if run >= p.t3.consecutive_sessions:
        return raise_unless_open(
            op,
            RuleId.T3,
            Severity.WARNING,
            dev,
            ROLLING,
            f"{run} sessions in a row mostly at max level or BOOST",
            ev,
        )
    if fractions[-1] < p.t3.max_fraction - p.t3.clear_margin:
        return clear_if_open(op, RuleId.T3, dev, ROLLING, "last session mostly below max level", ev)
    return []


def discomfort_events(r: SessionRecord, p: RuleParams) -> int:
    """T4 events in one session. Starting at the max level counts as a level-up (the default-max startle)."""
    t4 = p.t4
    changes = [
        e for e in r.events if e.event is EventType.LEVEL_CHANGE and None not in (e.level_from, e.level_to)
    ]
    ups = [(e.at, t4.down_after_up_s) for e in changes if (e.level_to or 0) > (e.level_from or 0)]
    if r.level_start >= p.hw.max_level:
        ups.insert(0, (r.started_at, t4.start_drop_s))
    downs = [e.at for e in changes if (e.level_to or 0) < (e.level_from or 0)]
    n = sum(1 for u, win in ups if any(0 <= (d - u).total_seconds() <= win for d in downs))
    if (
        r.end_reason is EndReason.USER
        and ups
        and (r.ended_at - ups[-1][0]).total_seconds() < t4.abort_after_up_s
    ):
        n += 1
    n += sum(1 for e in r.events if e.event is EventType.DISCOMFORT and (e.value or 0) >= t4.discomfort_score)
    return n


def _t4(p: RuleParams, op: OpenAlerts, dev: str, recent: list[SessionRecord]) -> list[AlertDecision]:
    per = {r.session_id: discomfort_events(r, p) for r in recent}
    n = sum(per.values())
    ev: Ev = {"events_7d": n, "sessions": tuple(k for k, v in per.items() if v)}
    if n >= p.t4.warn_events:
        return raise_unless_open(
            op,
            RuleId.T4,
            Severity.WARNING,
            dev,
            ROLLING,
            f"{n} discomfort signals in {p.t4.window_days} days: lower the default level",
            ev,
        )
    if n < p.t4.warn_events - p.t4.clear_margin_events:
        return clear_if_open(op, RuleId.T4, dev, ROLLING, f"{n} discomfort signals in the window", ev)
    return []


def _t6(p: RuleParams, op: OpenAlerts, dev: str, r: SessionRecord) -> list[AlertDecision]:
    """rms density of a square pulse train: peak × sqrt(duty) / area (IEC 60601-2-10 recommends <= 2 mA/cm²)."""
    density = r.current_ua_p95 / 1000 * p.hw.duty_cycle**0.5 / p.hw.electrode_area_cm2
    ev: Ev = {
        "density_ma_cm2": round(density, 3),
        "current_ua_p95": r.current_ua_p95,
        "electrode_area_cm2": p.hw.electrode_area_cm2,
    }
    sev = (
        Severity.CRITICAL
        if density > p.t6.critical_ma_cm2
        else Severity.WARNING
        if density > p.t6.warn_ma_cm2
        else None
    )
    if sev is None:
        return []
    return raise_unless_open(op, RuleId.T6, sev, dev, r.session_id, f"{density:.2f} mA/cm² rms", ev)
