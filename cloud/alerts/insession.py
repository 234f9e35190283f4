"""Rules evaluated while a session's telemetry arrives: O1, O6, O7, T1, T5, T7, T8.

`evaluate_in_session(message, state, params, now)` never mutates `state`: it returns a new state and the
decisions. The episode of every in-session alert is the session id; the state remembers which are open,
so a rule raises once per session (again only to raise its severity) and clears with hysteresis.

Samples are 1 Hz (DOMAIN.md 5.2), so counts of samples are seconds. A sample at or before the last one
seen is a duplicate or a straggler and is ignored: MQTT keeps one publisher's order, and the history
rules, not these, are the ones that must not depend on order.
"""

from __future__ import annotations

from datetime import datetime
from statistics import median

import msgspec

from cloud.alerts.decision import AlertDecision, EvidenceValue, clear_if_open, raise_unless_open
from cloud.alerts.inputs import DeviceProfile
from cloud.alerts.params import RuleId, RuleParams, Severity
from contract.messages import DeviceEvent, SampleBatch, SessionEnd, SessionStart, Zone

SessionMessage = SessionStart | SampleBatch | DeviceEvent | SessionEnd
FIRST_MINUTE_S = 60.0


class SessionMismatchError(ValueError):
    """A message for another device or session was given to this session's state."""


class SessionState(msgspec.Struct, kw_only=True):
    device_id: str
    session_id: str
    started_at: datetime
    neck_contraindicated: bool = False
    last_t: datetime | None = None
    last_level: int | None = None
    samples: int = 0
    active_s: int = 0
    high_impedance_s: int = 0
    current_sum: float = 0.0
    setpoint_sum: float = 0.0
    late_level_ups: int = 0
    first_minute: tuple[float, ...] = ()
    recent: tuple[float, ...] = ()
    zone: Zone | None = None
    zone_since: datetime | None = None
    restricted: tuple[str, ...] = ()
    restricted_s: int = 0
    over_cap_run: int = 0
    under_cap_run: int = 0
    open: dict[RuleId, Severity] = {}

    @classmethod
    def start(cls, profile: DeviceProfile, session_id: str, started_at: datetime) -> SessionState:
        flags = profile.contraindications
        return cls(
            device_id=profile.device_id,
            session_id=session_id,
            started_at=started_at,
            neck_contraindicated=flags.neck_contraindicated,
        )


class _Out:
    """Collects decisions against the session's open alerts (episode key = session id)."""

    def __init__(self, state: SessionState) -> None:
        self.state = state
        self.decisions: list[AlertDecision] = []

    def _open(self) -> dict[tuple[RuleId, str], Severity]:
        return {(r, self.state.session_id): s for r, s in self.state.open.items()}

    def raise_(self, rule: RuleId, sev: Severity, message: str, evidence: dict[str, EvidenceValue]) -> None:
        st = self.state
        new = raise_unless_open(self._open(), rule, sev, st.device_id, st.session_id, message, evidence)
        if new:
            st.open[rule] = sev
            self.decisions += new

    def clear(self, rule: RuleId, message: str, evidence: dict[str, EvidenceValue]) -> None:
        st = self.state
        done = clear_if_open(self._open(), rule, st.device_id, st.session_id, message, evidence)
        if done:
            del st.open[rule]
            self.decisions += done


def evaluate_in_session(
    message: SessionMessage, state: SessionState, params: RuleParams, now: datetime
) -> tuple[SessionState, list[AlertDecision]]:
    """Fold one message into a copy of `state`; return the new state and the decisions it causes."""
    del now  # the rules read telemetry time; `now` is kept for the engine's uniform call
    if message.device_id != state.device_id or getattr(message, "session_id", state.session_id) not in (
        state.session_id,
        None,
    ):
        raise SessionMismatchError(
            f"message for {message.device_id}/{getattr(message, 'session_id', None)} given to the state of "
            f"{state.device_id}/{state.session_id}: look the state up by (device_id, session_id)"
        )
    st = msgspec.structs.replace(state, open=dict(state.open))
    out = _Out(st)
    if isinstance(message, SampleBatch):
        for sample in sorted(message.samples, key=lambda s: s.t):
            if st.last_t is None or sample.t > st.last_t:
                _fold_sample(
                    st,
                    out,
                    params,
                    sample.t,
                    sample.current_ua,
                    sample.impedance_ohm,
                    sample.contact,
                    sample.zone,
                    sample.level,
                )
        _after_batch(st, out, params)
    elif isinstance(message, SessionEnd):
        _at_end(st, out, params, message)
    return st, out.decisions


def _fold_sample(
    st: SessionState,
    out: _Out,
    p: RuleParams,
    t: datetime,
    current: float,
    impedance: float,
    contact: bool,
    zone: Zone | None,
    level: int,
) -> None:
    elapsed = (t - st.started_at).total_seconds()
    st.last_t = t
    st.samples += 1
    st.active_s += current > 0
    st.high_impedance_s += impedance > p.t5.high_impedance_ohm
    if contact:
        st.current_sum += current
        st.setpoint_sum += p.hw.setpoint_ua(level)
    if st.last_level is not None and level > st.last_level and elapsed >= p.t1.after_s:
        st.late_level_ups += level - st.last_level
    st.last_level = level
    if current > 0:
        if elapsed < FIRST_MINUTE_S:
            st.first_minute = (*st.first_minute, current)
        st.recent = (*st.recent, current)[-p.t1.window_s :]
    # O6: continuous dwell in one zone
    if zone is None or zone != st.zone:
        st.zone, st.zone_since = zone, t
    elif p.o6.enabled and st.zone_since is not None:
        dwell = (t - st.zone_since).total_seconds() + 1
        if dwell > p.o6.max_dwell_s:
            out.raise_(
                RuleId.O6,
                Severity.WARNING,
                f"{dwell:.0f} s without moving on {zone} (limit {p.o6.max_dwell_s:.0f} s)",
                {"zone": str(zone), "dwell_s": dwell},
            )
    # O7: restricted zones, and the neck when the profile forbids it
    if zone is not None and (
        zone in p.o7.restricted_zones or (zone is Zone.NECK and st.neck_contraindicated)
    ):
        st.restricted_s += 1
        if zone.value not in st.restricted:
            st.restricted = tuple(sorted((*st.restricted, zone.value)))
    # T7: hardware envelope, per sample
    limit = min(p.hw.max_ua * p.t7.model_margin, p.t7.absolute_max_ua)
    if p.t7.enabled and current > limit:
        out.raise_(
            RuleId.T7,
            Severity.CRITICAL,
            f"current {current:.0f} µA above the envelope {limit:.0f} µA",
            {"current_ua": current, "limit_ua": limit, "at": t.isoformat()},
        )
    # T8: face-zone cap (pro), with a run length to raise and a lower level to clear
    if p.t8.enabled and zone is not None:
        over = current > p.t8.face_cap_ua
        under = current < p.t8.face_cap_ua - p.t8.clear_margin_ua
        st.over_cap_run = st.over_cap_run + 1 if over else 0
        st.under_cap_run = st.under_cap_run + 1 if under else 0
        ev: dict[str, EvidenceValue] = {"current_ua": current, "cap_ua": p.t8.face_cap_ua, "zone": zone.value}
        if st.over_cap_run >= p.t8.min_over_s:
            out.raise_(RuleId.T8, Severity.WARNING, f"{current:.0f} µA on {zone} above the face cap", ev)
        elif st.under_cap_run >= p.t8.min_over_s:
            out.clear(RuleId.T8, f"{current:.0f} µA, back under the face cap", ev)


def _after_batch(st: SessionState, out: _Out, p: RuleParams) -> None:
    _check_o1(st, out, p, float(st.active_s))
    if p.o7.enabled and st.restricted_s >= p.o7.min_dwell_s:
        out.raise_(
            RuleId.O7,
            Severity.ALERT,
            f"{st.restricted_s} s on restricted zones {list(st.restricted)}",
            {"zones": st.restricted, "seconds": st.restricted_s},
        )
    if p.t1.enabled:
        if st.late_level_ups >= p.t1.min_level_ups:
            out.raise_(
                RuleId.T1,
                Severity.INFO,
                f"{st.late_level_ups} level-ups after {p.t1.after_s:.0f} s",
                {"level_ups": st.late_level_ups},
            )
        elif len(st.first_minute) >= 10 and len(st.recent) >= p.t1.window_s:
            base, now_ = median(st.first_minute), median(st.recent)
            if base > 0 and now_ > base * p.t1.current_rise_ratio:
                out.raise_(
                    RuleId.T1,
                    Severity.INFO,
                    f"current median {now_:.0f} µA vs first minute {base:.0f} µA",
                    {"first_minute_ua": base, "recent_ua": now_},
                )
    if p.t5.enabled and st.samples >= p.t5.min_samples:
        high = st.high_impedance_s / st.samples
        ratio = st.current_sum / st.setpoint_sum if st.setpoint_sum > 0 else 1.0
        ev: dict[str, EvidenceValue] = {
            "high_impedance_fraction": round(high, 3),
            "current_ratio": round(ratio, 3),
        }
        if high > p.t5.max_high_fraction or ratio < p.t5.min_current_ratio:
            out.raise_(
                RuleId.T5,
                Severity.WARNING,
                f"poor contact: {high:.0%} of time above "
                f"{p.t5.high_impedance_ohm:.0f} Ω, current at {ratio:.0%} of setpoint",
                ev,
            )
        elif (
            high < p.t5.max_high_fraction - p.t5.clear_margin
            and ratio > p.t5.min_current_ratio + p.t5.clear_margin
        ):
            out.clear(RuleId.T5, "contact is good again", ev)


def _check_o1(st: SessionState, out: _Out, p: RuleParams, active_s: float) -> None:
    if not p.o1.enabled:
        return
    ev: dict[str, EvidenceValue] = {"active_s": active_s, "auto_off_s": p.hw.auto_off_s}
    if p.hw.auto_off_s is not None and active_s > p.hw.auto_off_s + p.o1.auto_off_grace_s:
        out.raise_(
            RuleId.O1,
            Severity.CRITICAL,
            f"active {active_s:.0f} s: the {p.hw.auto_off_s:.0f} s auto-off did not stop the output",
            ev,
        )
    elif active_s > p.o1.warn_active_s:
        out.raise_(RuleId.O1, Severity.WARNING, f"active {active_s:.0f} s > {p.o1.warn_active_s:.0f} s", ev)


def _at_end(st: SessionState, out: _Out, p: RuleParams, end: SessionEnd) -> None:
    """The device's own summary covers samples that never arrived."""
    s = end.summary
    _check_o1(st, out, p, max(s.duration_active_s, float(st.active_s)))
    limit = min(p.hw.max_ua * p.t7.model_margin, p.t7.absolute_max_ua)
    if p.t7.enabled and (s.current_ua_max > limit or s.charging_during_output):
        out.raise_(
            RuleId.T7,
            Severity.CRITICAL,
            f"summary: max {s.current_ua_max:.0f} µA (limit {limit:.0f}), "
            f"charging during output={s.charging_during_output}",
            {
                "current_ua_max": s.current_ua_max,
                "limit_ua": limit,
                "charging_during_output": s.charging_during_output,
            },
        )
    if p.t5.enabled and s.impedance_spikes >= p.t5.max_spikes:
        out.raise_(
            RuleId.T5,
            Severity.WARNING,
            f"{s.impedance_spikes} impedance spikes in the session",
            {"impedance_spikes": s.impedance_spikes},
        )
    bad = tuple(
        sorted(
            z.zone.value
            for z in s.zones
            if z.dwell_s >= p.o7.min_dwell_s
            and (z.zone in p.o7.restricted_zones or (z.zone is Zone.NECK and st.neck_contraindicated))
        )
    )
    if p.o7.enabled and bad:
        out.raise_(
            RuleId.O7, Severity.ALERT, f"summary: time on restricted zones {list(bad)}", {"zones": bad}
        )
