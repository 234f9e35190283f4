"""One batch of uplinks in, one transaction out: evaluate the rules, persist state and decisions.

`Engine.process(conn, items, now)` decodes the batch, locks its devices (store.lock_devices), loads
their open alerts, profiles, live session states and (for ended sessions) history, folds every message
through the pure rules in arrival order, and writes state, history, alerts, audit rows and outboxes in
ONE transaction. The caller acks the MQTT messages only after it commits: a crash before the commit
redelivers the batch to a state that does not contain it yet (no loss); after it, the state already has
it (the rules dedup open episodes, the upsert merges into the open alert: no duplicate).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache

from cloud.alerts import effects, store
from cloud.alerts.config import AlertConfig
from cloud.alerts.decision import Action, AlertDecision
from cloud.alerts.history import evaluate_history
from cloud.alerts.inputs import DeviceHistory, DeviceProfile, SessionRecord
from cloud.alerts.insession import SessionState, evaluate_in_session
from cloud.alerts.params import MODEL_OVERRIDES, RuleParams, profile_for_model, resolve_rule_params
from cloud.alerts.store import Applied, Conn, LiveSession, OpenMap
from contract.codec import decode_uplink
from contract.errors import ContractError, TopicError
from contract.messages import (
    DeviceEvent,
    EventType,
    SampleBatch,
    SessionEnd,
    SessionStart,
    UplinkMessage,
)

log = logging.getLogger(__name__)
HISTORY_DAYS = 60
HISTORY_EVENTS = (EventType.LEVEL_CHANGE, EventType.DISCOMFORT, EventType.BOOST)


@lru_cache(maxsize=64)
def params_for(model: str) -> RuleParams:
    return resolve_rule_params(profile_for_model(model), MODEL_OVERRIDES.get(model))


@dataclass
class BatchResult:
    messages: int = 0
    rejected: int = 0
    failed_devices: int = 0
    decisions: int = 0
    applied: list[Applied] = field(default_factory=list)
    notices: int = 0


def first_time(m: UplinkMessage) -> datetime:
    if isinstance(m, SessionStart | SessionEnd):
        return min(m.started_at, m.ts)
    if isinstance(m, SampleBatch):
        return min(m.samples[0].t, m.ts)
    return m.ts


class Engine:
    def __init__(self, cfg: AlertConfig) -> None:
        self.cfg = cfg

    def decode(
        self, items: Sequence[tuple[str, bytes]], now: datetime, result: BatchResult
    ) -> dict[str, list[UplinkMessage]]:
        by_device: dict[str, list[UplinkMessage]] = {}
        for topic, payload in items:
            try:
                m = decode_uplink(topic, payload, now)
            except (ContractError, TopicError) as exc:
                result.rejected += 1  # ingest quarantines the same bytes with its reason; nothing to evaluate
                log.debug("not evaluated: %s on %s", exc, topic)
                continue
            by_device.setdefault(m.device_id, []).append(m)
        return by_device

    def process(self, conn: Conn, items: Sequence[tuple[str, bytes]], now: datetime) -> BatchResult:
        result = BatchResult(messages=len(items))
        by_device = self.decode(items, now, result)
        if not by_device:
            return result
        with conn.transaction():
            firsts = {d: min(first_time(m) for m in ms) for d, ms in by_device.items()}
            first_seen = store.lock_devices(conn, firsts)
            opened = store.open_alerts(conn, by_device)
            profiles = store.profiles(conn, by_device)
            keys = [
                (m.device_id, m.session_id)
                for ms in by_device.values()
                for m in ms
                if isinstance(m, SessionStart | SampleBatch | SessionEnd)
                or (isinstance(m, DeviceEvent) and m.session_id is not None)
            ]
            live = store.session_states(conn, keys)  # type: ignore[arg-type]
            done_before = store.ended_sessions(conn, [k for k in keys if k not in live])  # type: ignore[misc]
            ending = [d for d, ms in by_device.items() if any(isinstance(m, SessionEnd) for m in ms)]
            past = store.history(conn, ending, now - timedelta(days=HISTORY_DAYS)) if ending else {}
            dirty: dict[tuple[str, str], LiveSession] = {}
            ended: list[tuple[str, str]] = list(done_before)
            times: dict[tuple[str, str, str], datetime] = {}
            for dev in sorted(by_device):
                row = profiles.get(dev)
                profile = row.profile if row else DeviceProfile(device_id=dev)
                ctx = _Device(self, conn, profile, opened.setdefault(dev, {}), live, dirty, ended, times)
                try:
                    with conn.transaction():  # a savepoint: one device's failure does not undo the others
                        for m in by_device[dev]:
                            ctx.fold(m, first_seen.get(dev, firsts[dev]), past.setdefault(dev, []), now)
                except Exception:  # a bug in one device's data must not stop the fleet: logged, skipped
                    log.exception(
                        "alert evaluation failed for device %s; its %d messages skipped",
                        dev,
                        len(by_device[dev]),
                    )
                    result.failed_devices += 1
                    ctx.decisions.clear()
                    for k in [k for k in dirty if k[0] == dev]:
                        del dirty[k]
                    ended[:] = [k for k in ended if k[0] != dev]
                result.decisions += len(ctx.decisions)
                for d in ctx.decisions:
                    a = store.apply_decision(conn, d, ctx.before, now)
                    if a is not None:
                        result.applied.append(a)
            store.save_session_states(conn, {k: v for k, v in dirty.items() if k not in set(ended)}, now)
            store.drop_session_states(conn, [k for k in ended if k not in done_before])
            episode_time = {
                a.alert_id: times.get(
                    (a.decision.device_id, a.decision.rule_id.value, a.decision.episode_key), now
                )
                for a in result.applied
            }
            result.notices = effects.route(conn, self.cfg, result.applied, profiles, now, episode_time)
        return result


class _Device:
    """Folds one device's messages of the batch in order, collecting its decisions."""

    def __init__(
        self,
        engine: Engine,
        conn: Conn,
        profile: DeviceProfile,
        open_map: OpenMap,
        live: dict[tuple[str, str], LiveSession],
        dirty: dict[tuple[str, str], LiveSession],
        ended: list[tuple[str, str]],
        times: dict[tuple[str, str, str], datetime],
    ) -> None:
        self.engine, self.conn, self.profile = engine, conn, profile
        self.open = open_map
        self.before: OpenMap = dict(open_map)
        self.live, self.dirty, self.ended, self.times = live, dirty, ended, times
        self.params = params_for(profile.model)
        self.decisions: list[AlertDecision] = []

    def _session(self, sid: str, started_at: datetime, tz: int | None = None) -> LiveSession:
        key = (self.profile.device_id, sid)
        s = self.live.get(key)
        if s is None:
            state = SessionState.start(self.profile, sid, started_at)
            s = LiveSession(state, self.profile.tz_offset_min if tz is None else tz, [])
            self.live[key] = s
        self.dirty[key] = s
        return s

    def _take(self, decisions: list[AlertDecision], at: datetime) -> None:
        for d in decisions:
            k = (d.rule_id, d.episode_key)
            if d.action is Action.CLEAR:
                self.open.pop(k, None)
            else:
                self.open[k] = max(d.severity, self.open.get(k, d.severity))
            self.times[(d.device_id, d.rule_id.value, d.episode_key)] = at
        self.decisions += decisions

    def fold(self, m: UplinkMessage, first_seen: datetime, past: list[SessionRecord], now: datetime) -> None:
        sid = getattr(m, "session_id", None)
        if sid is not None and (m.device_id, sid) in self.ended and not isinstance(m, SessionEnd):
            if isinstance(m, DeviceEvent) and m.event in (EventType.NOTICE_SHOWN, EventType.NOTICE_ACK):
                self._event(m)  # level/discomfort events of an ended session arrive too late for T3/T4
            return
        if isinstance(m, SessionStart):
            s = self._session(m.session_id, m.started_at, m.tz_offset_min)
            s.tz_offset_min = m.tz_offset_min
        elif isinstance(m, SampleBatch):
            s = self._session(m.session_id, m.samples[0].t)
            s.state, out = evaluate_in_session(m, s.state, self.params, now)
            self._take(out, m.samples[-1].t)
        elif isinstance(m, DeviceEvent):
            self._event(m)
        elif isinstance(m, SessionEnd):
            key = (m.device_id, m.session_id)
            if key in self.ended:
                return
            s = self._session(m.session_id, m.started_at)
            s.state, out = evaluate_in_session(m, s.state, self.params, now)
            self._take(out, m.ended_at)
            record = SessionRecord.from_end(m, s.tz_offset_min, s.events)
            hist = DeviceHistory.of(first_seen, (*past, record), self.open)
            past.append(record)
            self._take(evaluate_history(m, hist, self.profile, self.params, now), m.ended_at)
            store.save_history(self.conn, m.device_id, record)
            self.ended.append(key)

    def _event(self, m: DeviceEvent) -> None:
        if m.event is EventType.NOTICE_SHOWN:
            store.mark_notice(self.conn, m.detail, "shown_at", m.at)
        elif m.event is EventType.NOTICE_ACK:
            store.mark_notice(self.conn, m.detail, "acked_at", m.at)
        elif m.event in HISTORY_EVENTS and m.session_id is not None:
            s = self._session(m.session_id, m.at)
            if all(e.seq != m.seq for e in s.events):
                s.events.append(m)
