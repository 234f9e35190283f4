"""Collect uplink messages into batches: pure, with injected time.

`Batcher.add` takes one raw MQTT message (topic, payload, an acknowledgement token), decodes it with the
contract codec and either adds its rows (one row per natural key: duplicates inside a batch collapse,
session start/end merge, device rows merge) or a quarantine row with the reason. `due(now)` says when a
batch should be written (size or age) and `take()` hands over the `Batch` and starts a new one.

The tokens of every message, valid or quarantined, are in `Batch.acks`: the consumer acknowledges them
only after the transaction holding the batch has committed.

End-to-end acknowledgement (cloud/ingest/marks.py): `Batch.receipts` holds (device_id, seq) of every
message the batch commits, stored or quarantined (a quarantined one when its device and seq can be read),
and `Batch.syncs` the devices' SyncRequests (topic kind `sync`, decoded with `decode_sync`, not telemetry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from cloud.ingest import rows, tables
from cloud.ingest.rows import Receipt, Row
from contract.codec import MAX_PAYLOAD_BYTES, decode_sync, decode_uplink
from contract.errors import ContractError, Reason
from contract.messages import (
    DeviceEvent,
    OtaReport,
    SampleBatch,
    SessionEnd,
    SessionStart,
    Status,
    UplinkMessage,
    kind_of,
)
from contract.topics import Uplink

T = TypeVar("T")

# The late horizon (docs/data-model.md, "Late data"): data older than this is quarantined as too_late (kept,
# replayable with `microfleet quarantine replay`). It is never shorter than what the edge outbox holds for a
# device that was offline (edge/config.py: two weeks of a heavy user) plus a margin for the reconnect, the
# drain and clock skew. On TimescaleDB it is compress_after (17 days, migration 0006) minus LATE_MARGIN, so
# ingest never writes into a compressed chunk; on plain PostgreSQL nothing is compressed and it is the
# shortest retention of the tables ingest writes (or NO_LATE_HORIZON): see late_horizon_for.
OUTBOX_OFFLINE_CAPACITY = timedelta(days=14)
MIN_LATE_HORIZON = OUTBOX_OFFLINE_CAPACITY + timedelta(days=2)
DEFAULT_LATE_HORIZON = MIN_LATE_HORIZON
LATE_MARGIN = timedelta(days=1)  # between the horizon and compress_after: a batch retried for a while
NO_LATE_HORIZON = timedelta(days=100 * 366)  # nothing drops old data: accept anything after 1926 or so
Sync = tuple[str, int, int, str]
_SAMPLES = (
    Uplink.SAMPLES.value
)  # the uplink_log kind of a sample batch  # (device_id, floor, next_seq, epoch) of a SyncRequest


def late_horizon_for(
    path: str | None, compress_after: timedelta | None, retention: timedelta | None
) -> timedelta:
    """Pure: the late horizon of a storage path ("timescale" or "plain"), from the smallest compress_after
    and retention of the time-series tables ingest writes (storage_policy). Never below MIN_LATE_HORIZON:
    if an operator set compress_after shorter, late rows go into compressed chunks (slower) rather than
    into quarantine."""
    if path == "timescale":
        horizon = DEFAULT_LATE_HORIZON if compress_after is None else compress_after - LATE_MARGIN
    elif path == "plain":
        horizon = NO_LATE_HORIZON if retention is None else retention
    else:
        horizon = DEFAULT_LATE_HORIZON
    return max(horizon, MIN_LATE_HORIZON)


@dataclass(slots=True)
class Batch(Generic[T]):
    """Rows per table for one transaction, and the acknowledgement tokens of every message in it."""

    samples: list[Row] = field(default_factory=list)
    sessions: list[Row] = field(default_factory=list)
    events: list[Row] = field(default_factory=list)
    ota_reports: list[Row] = field(default_factory=list)
    uplink_log: list[Row] = field(default_factory=list)
    devices: list[Row] = field(default_factory=list)
    quarantine: list[Row] = field(default_factory=list)
    acks: list[T] = field(default_factory=list)
    # the accepted messages as received and decoded, to isolate one the database refuses (see writer.py)
    accepted: list[tuple[str, bytes, UplinkMessage]] = field(default_factory=list)
    first_at: float = 0.0  # monotonic time of the first message
    receipts: list[Receipt] = field(default_factory=list)
    syncs: list[Sync] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return len(self.acks)

    @property
    def raw(self) -> list[tuple[str, bytes]]:
        return [(t, p) for t, p, _ in self.accepted]


class Batcher(Generic[T]):
    def __init__(
        self,
        *,
        consumer: str,
        max_messages: int = 2000,
        max_delay_s: float = 0.05,
        late_horizon: timedelta = DEFAULT_LATE_HORIZON,
        max_payload: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        if max_messages < 1 or max_delay_s < 0:
            raise ValueError("max_messages must be >= 1 and max_delay_s >= 0")
        self.consumer = consumer
        self.max_messages = max_messages
        self.max_delay_s = max_delay_s
        self.late_horizon = late_horizon
        self.max_payload = max_payload
        self._reset()

    def _reset(self) -> None:
        self._acks: list[T] = []
        self._accepted: list[tuple[str, bytes, UplinkMessage]] = []
        self._receipts: list[Receipt] = []
        self._syncs: list[Sync] = []
        self._samples: list[Row] = []
        # per device: (earliest, latest) sample time in this batch; a device listed in _sample_keys has a
        # message that overlapped its span or repeated a time, and from then on its samples are deduplicated
        # by key (see _add_samples)
        self._spans: dict[str, tuple[datetime, datetime]] = {}
        self._sample_keys: dict[str, set[datetime]] = {}
        self._events: dict[tuple[object, ...], Row] = {}
        self._ota: dict[tuple[object, ...], Row] = {}
        self._log: dict[tuple[object, ...], Row] = {}
        self._sessions: dict[tuple[object, ...], Row] = {}
        self._devices: dict[str, Row] = {}
        self._ranks: dict[str, tuple[datetime, int] | None] = {}
        self._quarantine: dict[tuple[object, ...], Row] = {}
        self._first_at = 0.0

    def __len__(self) -> int:
        return len(self._acks)

    def add(self, topic: str, payload: bytes, ack: T, *, now: datetime, mono: float) -> Reason | None:
        """Add one message; return the quarantine reason if it was rejected, else None."""
        if not self._acks:
            self._first_at = mono
        self._acks.append(ack)
        try:
            if topic.endswith("/sync"):
                sync = decode_sync(topic, payload, now, max_bytes=self.max_payload)
                self._syncs.append((sync.device_id, sync.floor, sync.next_seq, sync.epoch))
                return None
            message = decode_uplink(topic, payload, now, max_bytes=self.max_payload)
            if type(message) is SampleBatch:  # 9 messages in 10: a fast path with the same outcome
                return self._add_samples(topic, payload, message, now)
            oldest = rows.oldest_time(message)
            if oldest < now - self.late_horizon:
                raise ContractError(Reason.TOO_LATE, self._too_late(oldest))
            self._check_fits(message)
        except ContractError as exc:
            self.add_quarantine(topic, payload, exc.reason, exc.detail)
            return exc.reason
        self.add_decoded(topic, payload, message)
        return None

    def _add_samples(self, topic: str, payload: bytes, m: SampleBatch, now: datetime) -> Reason | None:
        """`add` of a decoded sample batch, in one pass over its samples: the late-horizon check, the rows,
        and one row per (device_id, ts) without hashing every sample's time. A device's samples usually
        come in time order, so a message whose samples all lie after (or before) what the batch holds of
        its device, in increasing order, cannot repeat a key; anything else (a redelivery, a message
        overtaken by a later one, a repeated time) switches that device to per-key deduplication for the
        rest of the batch. The column-type check is not needed: the contract bounds every field of a
        sample batch within its column (tests/cloud/test_ingest_batcher.py checks it at the bounds)."""
        d, sid = m.device_id, m.session_id
        built = [
            (d, s.t, sid, s.current_ua, s.voltage_v, s.impedance_ohm, s.contact, s.zone, s.level)
            for s in m.samples
        ]
        first = lo = hi = built[0][1]
        ordered = True
        for r in built[1:]:
            t = r[1]
            if t > hi:
                hi = t
            else:
                ordered = False
                if t < lo:
                    lo = t
        oldest = lo if lo < m.ts else m.ts
        cutoff = now - self.late_horizon
        if oldest < cutoff:
            self.add_quarantine(topic, payload, Reason.TOO_LATE, self._too_late(oldest))
            return Reason.TOO_LATE
        self._accepted.append((topic, payload, m))
        self._receipts.append((d, m.seq))
        self._log.setdefault((d, m.seq, m.ts), (d, m.seq, _SAMPLES, m.ts, self.consumer))
        keys = self._sample_keys.get(d)
        span = self._spans.get(d)
        if keys is None and not (ordered and (span is None or first > span[1] or hi < span[0])):
            keys = self._sample_keys[d] = {r[1] for r in self._samples if r[0] == d}
        if keys is None:
            self._samples += built
        else:
            for r in built:
                if r[1] not in keys:
                    keys.add(r[1])
                    self._samples.append(r)
        self._spans[d] = (lo, hi) if span is None else (min(lo, span[0]), max(hi, span[1]))
        old = self._devices.get(d)
        if old is None:
            self._devices[d] = rows.device_row(m)
            self._ranks[d] = None
        elif m.ts > old[1] or m.seq > old[2]:  # rows.merge_device with no status in the new row
            self._devices[d] = (d, max(old[1], m.ts), max(old[2], m.seq), *old[3:])
        return None

    def _too_late(self, oldest: datetime) -> str:
        return (
            f"data from {oldest.isoformat()} is older than the late horizon "
            f"({self.late_horizon}); replay it from quarantine into uncompressed storage if needed"
        )

    def add_decoded(self, topic: str, payload: bytes, message: UplinkMessage) -> None:
        """Add a message already decoded and checked (the writer re-batches a part of a refused batch)."""
        self._accepted.append((topic, payload, message))
        self._receipts.append((message.device_id, message.seq))
        self._add_message(message)

    def add_quarantine(self, topic: str, payload: bytes, reason: Reason, detail: str) -> None:
        """Quarantine the message (texts cleaned: rows.quarantine_row), with its receipt if it has one."""
        row = rows.quarantine_row(topic, payload, reason, detail, self.consumer)
        if self._quarantine.setdefault((row[0], row[2]), row) is row:
            receipt = rows.lenient_receipt(topic, payload)
            if receipt is not None:
                self._receipts.append(receipt)

    def quarantine_detail(self, topic: str, payload: bytes) -> str | None:
        """The detail of this message's quarantine row in the current batch (None if it has none)."""
        row = self._quarantine.get((rows.clean_text(topic, rows.MAX_TOPIC_CHARS), rows.sha256(payload)))
        return None if row is None else str(row[4])

    def _check_fits(self, m: UplinkMessage) -> None:
        """Reject values the contract allows but a column cannot hold (samples are bounded by the contract)."""
        checks: list[tuple[tables.Table, Row]] = [
            (tables.UPLINK_LOG, rows.uplink_log_row(m, "", "")),
            (tables.DEVICES, rows.device_row(m)),
        ]
        if isinstance(m, SessionStart):
            checks.append((tables.SESSIONS, rows.session_start_row(m)))
        elif isinstance(m, SessionEnd):
            checks.append((tables.SESSIONS, rows.session_end_row(m)))
        elif isinstance(m, DeviceEvent):
            checks.append((tables.EVENTS, rows.event_row(m)))
        for table, row in checks:
            why = tables.misfit(table, row)
            if why is not None:
                raise ContractError(Reason.OUT_OF_RANGE, f"{table.name}: {why}")

    def _add_message(self, m: UplinkMessage) -> None:
        kind = kind_of(m).value
        self._log.setdefault((m.device_id, m.seq, m.ts), rows.uplink_log_row(m, kind, self.consumer))
        if isinstance(m, SampleBatch):  # the writer re-batching a refused batch: plain per-key dedup
            keys = self._sample_keys.setdefault(
                m.device_id, {r[1] for r in self._samples if r[0] == m.device_id}
            )
            for r in rows.sample_rows(m):
                if r[1] not in keys:
                    keys.add(r[1])
                    self._samples.append(r)
        elif isinstance(m, SessionStart | SessionEnd):
            new = rows.session_start_row(m) if isinstance(m, SessionStart) else rows.session_end_row(m)
            key = (m.device_id, m.session_id, m.started_at)
            old = self._sessions.get(key)
            self._sessions[key] = new if old is None else rows.merge_session(old, new)
        elif isinstance(m, DeviceEvent):
            self._events.setdefault((m.device_id, m.seq, m.at), rows.event_row(m))
        elif isinstance(m, OtaReport):
            self._ota.setdefault((m.device_id, m.seq, m.ts), rows.ota_report_row(m))
        rank = rows.status_rank(m) if isinstance(m, Status) else None
        dev = rows.device_row(m)
        old_dev = self._devices.get(m.device_id)
        if old_dev is None:
            self._devices[m.device_id] = dev
            self._ranks[m.device_id] = rank
        else:
            old_rank = self._ranks[m.device_id]
            self._devices[m.device_id] = rows.merge_device(old_dev, dev, old_rank, rank)
            if rank is not None and (old_rank is None or rank >= old_rank):
                self._ranks[m.device_id] = rank

    def due(self, mono: float) -> bool:
        """True when the batch is full, or not empty and older than max_delay_s."""
        if not self._acks:
            return False
        return len(self._acks) >= self.max_messages or mono - self._first_at >= self.max_delay_s

    def deadline(self) -> float | None:
        """Monotonic time at which the current batch becomes due by age (None when empty)."""
        return self._first_at + self.max_delay_s if self._acks else None

    def take(self) -> Batch[T]:
        batch: Batch[T] = Batch(
            samples=self._samples,
            sessions=list(self._sessions.values()),
            events=list(self._events.values()),
            ota_reports=list(self._ota.values()),
            uplink_log=list(self._log.values()),
            devices=list(self._devices.values()),
            quarantine=list(self._quarantine.values()),
            acks=self._acks,
            accepted=self._accepted,
            first_at=self._first_at,
            receipts=self._receipts,
            syncs=self._syncs,
        )
        self._reset()
        return batch
