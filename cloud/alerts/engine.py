"""One batch of uplinks in, one transaction out: evaluate the rules, persist state and decisions.

`Engine.process(conn, items, now)` decodes the batch, locks its devices and loads their open alerts,
profiles, live session states and (for ended sessions) history in one pipelined round trip
(bulk.load), folds every message through the pure rules in arrival order (no I/O while folding), and
writes state, history, alerts, audit rows and outboxes set-based (bulk.write) in ONE transaction whose
COMMIT leaves in the same pipeline. The caller acks the MQTT messages only after it commits: a crash
before the commit redelivers the batch to a state that does not contain it yet (no loss); after it, the
state already has it (the rules dedup open episodes, the upsert merges into the open alert: no duplicate).

No input stops the engine (cloud/alerts/refused.py): a message the contract refuses, one holding a value
PostgreSQL cannot store, or one whose evaluation raises is refused (logged, recorded in alert_refused,
acked with the batch). If the database refuses the batch, or reading or writing it raises, the batch is
redone device by device, each in a savepoint, and a device that fails is redone message by message, so
only the message at fault is refused and the rest commits. Only a transient database failure (the
connection, a deadlock, a cancel) leaves `process`: the caller reconnects and retries the batch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

from cloud.alerts import bulk, refused
from cloud.alerts.config import AlertConfig
from cloud.alerts.decision import Action, AlertDecision
from cloud.alerts.history import evaluate_history
from cloud.alerts.inputs import DeviceHistory, DeviceProfile, SessionRecord
from cloud.alerts.insession import SessionState, evaluate_in_session
from cloud.alerts.params import RuleParams
from cloud.alerts.refused import Refusal
from cloud.alerts.store import Applied, Conn, LiveSession, OpenMap
from contract.codec import decode_uplink
from contract.errors import ContractError
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
# SQLSTATE classes worth retrying the same batch for: connection, transaction rollback (deadlock,
# serialization), insufficient resources, operator intervention (cancel, shutdown), system error
TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
TRANSIENT_STATES = ("55P03",)  # lock_not_available


@dataclass
class BatchResult:
    messages: int = 0
    rejected: int = 0  # refused by the contract (ingest quarantines the same bytes)
    failed_devices: int = 0  # devices the batch had to be redone for, one by one
    decisions: int = 0
    applied: list[Applied] = field(default_factory=list)
    notices: int = 0
    refused: list[Refusal] = field(default_factory=list)  # every message not evaluated, with why

    def merge(self, other: BatchResult) -> None:
        self.decisions += other.decisions
        self.applied += other.applied
        self.notices += other.notices
        self.refused += other.refused


@dataclass(frozen=True, slots=True)
class Decoded:
    topic: str
    payload: bytes
    message: UplinkMessage


ByDevice = dict[str, list[Decoded]]


def first_time(m: UplinkMessage) -> datetime:
    if isinstance(m, SessionStart | SessionEnd):
        return min(m.started_at, m.ts)
    if isinstance(m, SampleBatch):
        return min(m.samples[0].t, m.ts)
    return m.ts


def is_transient(conn: Conn, exc: BaseException) -> bool:
    """A failure retrying the same batch can cure (not the batch's data): the caller reconnects."""
    if not isinstance(exc, psycopg.Error):
        return False
    if conn.closed or conn.broken:
        return True
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith(TRANSIENT_CLASSES) or state in TRANSIENT_STATES


class Engine:
    def __init__(self, cfg: AlertConfig) -> None:
        self.cfg = cfg
        self.refused: Counter[str] = Counter()  # messages refused since start, by reason
        self.evaluated = 0  # messages folded through the rules and committed

    def _refuse(
        self,
        result: BatchResult,
        item: tuple[str, bytes],
        reason: str,
        detail: str,
        *,
        level: int = logging.WARNING,
        exc: BaseException | None = None,
    ) -> None:
        r = Refusal.of(item[0], item[1], reason, detail)
        r.log(level)
        if exc is not None:
            log.debug("the refused message's exception", exc_info=exc)
        result.refused.append(r)

    def decode(self, items: Sequence[tuple[str, bytes]], now: datetime, result: BatchResult) -> ByDevice:
        by_device: ByDevice = {}
        for topic, payload in items:
            try:
                m = decode_uplink(topic, payload, now)
                why = refused.unstorable(payload, m)
            except ContractError as exc:  # ingest quarantines the same bytes with the same reason
                result.rejected += 1
                self._refuse(result, (topic, payload), exc.reason.value, exc.detail, level=logging.INFO)
                continue
            except Exception as exc:  # noqa: BLE001 - no input may stop the engine
                self._refuse(result, (topic, payload), refused.EVALUATION_FAILED, refused.describe(exc))
                continue
            if why is not None:
                self._refuse(result, (topic, payload), refused.UNSTORABLE, why)
                continue
            if isinstance(m, SessionStart | SampleBatch | SessionEnd | DeviceEvent):  # no rule reads the rest
                by_device.setdefault(m.device_id, []).append(Decoded(topic, payload, m))
        return by_device

    def process(self, conn: Conn, items: Sequence[tuple[str, bytes]], now: datetime) -> BatchResult:
        """Evaluate and commit the batch; raises only a transient database error (retry the batch)."""
        result = BatchResult(messages=len(items))
        by_device = self.decode(items, now, result)
        decoded_refusals = list(result.refused)
        try:
            with conn.pipeline(), conn.transaction():
                if by_device:
                    self._batch(conn, by_device, now, result)
                refused.record(conn, result.refused, self.cfg.consumer_id, now)
        except Exception as exc:
            if is_transient(conn, exc):
                raise  # the connection or the server: the caller reconnects and retries the batch
            log.warning(
                "batch of %d messages failed (%s); redoing it device by device",
                len(items),
                refused.describe(exc),
            )
            result = BatchResult(messages=len(items), rejected=result.rejected, refused=decoded_refusals)
            self._isolated(conn, by_device, now, result)
        self.refused.update(r.reason for r in result.refused)
        self.evaluated += len(items) - len(result.refused)
        return result

    def _isolated(self, conn: Conn, by_device: ByDevice, now: datetime, result: BatchResult) -> None:
        """Each device in a savepoint; a device that fails, each of its messages in a savepoint."""
        with conn.transaction():
            for dev in sorted(by_device):
                if self._attempt(conn, {dev: by_device[dev]}, now, result) is None:
                    continue
                result.failed_devices += 1
                for d in by_device[dev]:
                    exc = self._attempt(conn, {dev: [d]}, now, result)
                    if exc is not None:
                        why = (
                            refused.DB_REFUSED
                            if isinstance(exc, psycopg.Error)
                            else refused.EVALUATION_FAILED
                        )
                        self._refuse(result, (d.topic, d.payload), why, refused.describe(exc), exc=exc)
            try:
                with conn.transaction():
                    refused.record(conn, result.refused, self.cfg.consumer_id, now)
            except Exception as exc:
                if is_transient(conn, exc):
                    raise
                log.error("could not record %d refused messages (%s)", len(result.refused), exc)

    def _attempt(self, conn: Conn, part: ByDevice, now: datetime, result: BatchResult) -> Exception | None:
        """Evaluate and write `part` in a savepoint: its exception if it failed (nothing of it kept)."""
        sub = BatchResult()
        try:
            with conn.transaction():
                self._batch(conn, part, now, sub)
        except Exception as exc:
            if is_transient(conn, exc):
                raise
            return exc
        result.merge(sub)
        return None

    def _batch(self, conn: Conn, by_device: ByDevice, now: datetime, result: BatchResult) -> None:
        """Read (one round trip), fold every device in Python, write (set-based)."""
        firsts = {d: min(first_time(x.message) for x in xs) for d, xs in by_device.items()}
        keys = [
            (m.device_id, m.session_id)
            for xs in by_device.values()
            for m in (x.message for x in xs)
            if isinstance(m, SessionStart | SampleBatch | SessionEnd)
            or (isinstance(m, DeviceEvent) and m.session_id is not None)
        ]
        ending = sorted(
            d for d, xs in by_device.items() if any(isinstance(x.message, SessionEnd) for x in xs)
        )
        got = bulk.load(conn, firsts, keys, ending, now - timedelta(days=HISTORY_DAYS))  # type: ignore[arg-type]
        batch = bulk.Pending()
        for dev in sorted(by_device):
            row = got.profiles.get(dev)
            profile = row.profile if row else DeviceProfile(device_id=dev)
            ctx = _Device(profile, got.params[dev], got.opened.setdefault(dev, {}), got.live, got.done_before)
            first_seen, past = got.first_seen.get(dev, firsts[dev]), got.past.setdefault(dev, [])
            for x in by_device[dev]:
                try:
                    ctx.fold(x.message, first_seen, past, now)
                except Exception as exc:  # noqa: BLE001 - a bug or a value no rule expected: this message only
                    self._refuse(
                        result,
                        (x.topic, x.payload),
                        refused.EVALUATION_FAILED,
                        refused.describe(exc),
                        exc=exc,
                    )
            pending = ctx.pending()
            result.decisions += len(pending.decisions)
            batch.merge(pending)
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
