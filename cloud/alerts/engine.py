"""One batch of uplinks in, one transaction out: evaluate the rules, persist state and decisions.

`Engine.process(conn, items, now)` decodes the batch, locks its devices and loads their open alerts,
profiles, live session states and (for ended sessions) history in one pipelined round trip
(bulk.load), folds every message through the pure rules in arrival order (no I/O while folding), and
writes state, history, alerts, audit rows and outboxes set-based (bulk.write) in ONE transaction whose
COMMIT leaves in the same pipeline. If the database refuses a row, the batch is redone with one
savepoint per device, so one device's bad data never blocks the others. The caller acks the MQTT messages only after it commits: a crash before the commit
redelivers the batch to a state that does not contain it yet (no loss); after it, the state already has
it (the rules dedup open episodes, the upsert merges into the open alert: no duplicate).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

from cloud.alerts import bulk
from cloud.alerts.config import AlertConfig
from cloud.alerts.decision import Action, AlertDecision
from cloud.alerts.history import evaluate_history
from cloud.alerts.inputs import DeviceHistory, DeviceProfile, SessionRecord
from cloud.alerts.insession import SessionState, evaluate_in_session
from cloud.alerts.params import RuleParams
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
            if isinstance(m, SessionStart | SampleBatch | SessionEnd | DeviceEvent):  # no rule reads the rest
                by_device.setdefault(m.device_id, []).append(m)
        return by_device

    def process(self, conn: Conn, items: Sequence[tuple[str, bytes]], now: datetime) -> BatchResult:
        result = BatchResult(messages=len(items))
        by_device = self.decode(items, now, result)
        if not by_device:
            return result
        try:
            with conn.pipeline(), conn.transaction():
                self._batch(conn, by_device, now, result, isolate=False)
        except psycopg.OperationalError:
            raise  # the connection or the server: the caller reconnects and retries the batch
        except psycopg.DatabaseError as exc:  # a row the database refuses: find its device, keep the rest
            log.warning("batch of %d messages refused (%s); writing it device by device", len(items), exc)
            result = BatchResult(messages=len(items), rejected=result.rejected)
            with conn.transaction():
                self._batch(conn, by_device, now, result, isolate=True)
        return result

    def _batch(
        self,
        conn: Conn,
        by_device: dict[str, list[UplinkMessage]],
        now: datetime,
        result: BatchResult,
        *,
        isolate: bool,
    ) -> None:
        """Read (one round trip), fold every device in Python, write (set-based, or per device savepoint)."""
        firsts = {d: min(first_time(m) for m in ms) for d, ms in by_device.items()}
        keys = [
            (m.device_id, m.session_id)
            for ms in by_device.values()
            for m in ms
            if isinstance(m, SessionStart | SampleBatch | SessionEnd)
            or (isinstance(m, DeviceEvent) and m.session_id is not None)
        ]
        ending = sorted(d for d, ms in by_device.items() if any(isinstance(m, SessionEnd) for m in ms))
        got = bulk.load(conn, firsts, keys, ending, now - timedelta(days=HISTORY_DAYS))  # type: ignore[arg-type]
        batch = bulk.Pending()
        for dev in sorted(by_device):
            row = got.profiles.get(dev)
            profile = row.profile if row else DeviceProfile(device_id=dev)
            ctx = _Device(profile, got.params[dev], got.opened.setdefault(dev, {}), got.live, got.done_before)
            try:
                for m in by_device[dev]:
                    ctx.fold(m, got.first_seen.get(dev, firsts[dev]), got.past.setdefault(dev, []), now)
            except Exception:  # a bug in one device's data must not stop the fleet: logged, skipped
                log.exception(
                    "alert evaluation failed for device %s; its %d messages skipped", dev, len(by_device[dev])
                )
                result.failed_devices += 1
                continue
            pending = ctx.pending()
            result.decisions += len(pending.decisions)
            if not isolate:
                batch.merge(pending)
                continue
            try:
                with conn.transaction():  # a savepoint: this device's refused rows do not undo the others
                    applied, notices = bulk.write(conn, self.cfg, pending, got.profiles, now)
            except psycopg.OperationalError:
                raise
            except psycopg.DatabaseError:
                log.exception("alert rows of device %s refused by the database; its messages skipped", dev)
                result.failed_devices += 1
                continue
            result.applied += applied
            result.notices += notices
        if not isolate:
            result.applied, result.notices = bulk.write(conn, self.cfg, batch, got.profiles, now)


class _Device:
    """Folds one device's messages of the batch in order (pure: no I/O), collecting its writes."""

    def __init__(
        self,
        profile: DeviceProfile,
        params: RuleParams,
        open_map: OpenMap,
        live: dict[tuple[str, str], LiveSession],
        done_before: set[tuple[str, str]],
    ) -> None:
        self.profile = profile
        self.open = open_map
        self.out = bulk.Pending(before={profile.device_id: dict(open_map)})
        self.live, self.done_before = live, done_before
        self.ended: list[tuple[str, str]] = []
        self.dirty: dict[tuple[str, str], LiveSession] = {}
        self.params = params

    def pending(self) -> bulk.Pending:
        """The device's writes: its live sessions' state (but not the ones that ended), its drops."""
        self.out.states = {k: v for k, v in self.dirty.items() if k not in self.ended}
        self.out.drops = list(self.ended)
        return self.out

    def _is_ended(self, key: tuple[str, str]) -> bool:
        return key in self.done_before or key in self.ended

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
            self.out.times[(d.device_id, d.rule_id.value, d.episode_key)] = at
        self.out.decisions += decisions

    def fold(self, m: UplinkMessage, first_seen: datetime, past: list[SessionRecord], now: datetime) -> None:
        sid = getattr(m, "session_id", None)
        if sid is not None and self._is_ended((m.device_id, sid)) and not isinstance(m, SessionEnd):
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
            if self._is_ended(key):
                return
            s = self._session(m.session_id, m.started_at)
            s.state, out = evaluate_in_session(m, s.state, self.params, now)
            self._take(out, m.ended_at)
            record = SessionRecord.from_end(m, s.tz_offset_min, s.events)
            hist = DeviceHistory.of(first_seen, (*past, record), self.open)
            past.append(record)
            self._take(evaluate_history(m, hist, self.profile, self.params, now), m.ended_at)
            self.out.history[key] = record
            self.ended.append(key)

    def _event(self, m: DeviceEvent) -> None:
        if m.event is EventType.NOTICE_SHOWN:
            self.out.mark(m.detail, "shown_at", m.at)
        elif m.event is EventType.NOTICE_ACK:
            self.out.mark(m.detail, "acked_at", m.at)
        elif m.event in HISTORY_EVENTS and m.session_id is not None:
            s = self._session(m.session_id, m.at)
            if all(e.seq != m.seq for e in s.events):
                s.events.append(m)
