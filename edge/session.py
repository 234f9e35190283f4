"""The session recorder: a pure state machine from user actions and readings to uplink messages.

    start(...)        -> [SessionStart]
    record(reading)   -> [] or [SampleBatch] when `samples_per_batch` samples are pending
    change_level(...) -> [DeviceEvent(LEVEL_CHANGE)]
    end(reason)       -> [SampleBatch (the rest, if any), SessionEnd(summary)]

Messages come out *unnumbered* (`seq=0`): the outbox gives each its per-device sequence number in the
same transaction that stores it (see `number`). No I/O, no clock: every call takes `now`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from contract.messages import (
    DeviceEvent,
    EndReason,
    EventType,
    Sample,
    SampleBatch,
    SessionEnd,
    SessionStart,
    UplinkMessage,
)
from edge.sensor import Reading
from edge.summary import SummaryAccumulator

UNNUMBERED = 0


class SessionError(RuntimeError):
    """An action that does not fit the session state (a bug in the caller, not bad data)."""


def number(message: UplinkMessage, seq: int) -> UplinkMessage:
    """The message with its sequence number set."""
    return msgspec.structs.replace(message, seq=seq)


@dataclass(slots=True)
class _Open:
    session_id: str
    started_at: datetime
    level: int
    acc: SummaryAccumulator
    pending: list[Sample] = field(default_factory=list)


class SessionRecorder:
    def __init__(
        self, device_id: str, *, samples_per_batch: int = 10, tz_offset_min: int = 0, fw_version: str = ""
    ) -> None:
        if not 1 <= samples_per_batch <= 600:
            raise ValueError("samples_per_batch must be within 1..600")
        self.device_id = device_id
        self.samples_per_batch = samples_per_batch
        self.tz_offset_min = tz_offset_min
        self.fw_version = fw_version
        self._open: _Open | None = None

    @property
    def session_id(self) -> str | None:
        return self._open.session_id if self._open else None

    @property
    def level(self) -> int | None:
        return self._open.level if self._open else None

    def _require(self) -> _Open:
        if self._open is None:
            raise SessionError("no session is running: call start() first")
        return self._open

    def start(
        self, session_id: str, now: datetime, level: int, *, protocol_id: str = "", protocol_version: int = 0
    ) -> list[UplinkMessage]:
        if self._open is not None:
            raise SessionError(f"session {self._open.session_id} is still running: end it first")
        self._open = _Open(session_id, now, level, SummaryAccumulator(level_start=level))
        return [
            SessionStart(
                device_id=self.device_id,
                seq=UNNUMBERED,
                ts=now,
                session_id=session_id,
                started_at=now,
                level=level,
                tz_offset_min=self.tz_offset_min,
                protocol_id=protocol_id,
                protocol_version=protocol_version,
                fw_version=self.fw_version,
            )
        ]

    def record(self, reading: Reading) -> list[UplinkMessage]:
        s = self._require()
        s.pending.append(
            Sample(
                reading.t,
                reading.current_ua,
                reading.voltage_v,
                reading.impedance_ohm,
                reading.contact,
                reading.zone,
                s.level,
            )
        )
        s.acc.add(reading.current_ua, reading.voltage_v, reading.impedance_ohm, reading.contact, reading.zone)
        if len(s.pending) >= self.samples_per_batch:
            return [self._flush(s, reading.t)]
        return []

    def change_level(self, now: datetime, level: int) -> list[UplinkMessage]:
        s = self._require()
        if level == s.level:
            return []
        old, s.level = s.level, level
        s.acc.level_changed(old, level)
        event = DeviceEvent(
            device_id=self.device_id,
            seq=UNNUMBERED,
            ts=now,
            event=EventType.LEVEL_CHANGE,
            at=now,
            session_id=s.session_id,
            level_from=old,
            level_to=level,
        )
        return [event]

    def end(self, now: datetime, reason: EndReason) -> list[UplinkMessage]:
        s = self._require()
        out: list[UplinkMessage] = [self._flush(s, now)] if s.pending else []
        ended_at = max(now, s.started_at)
        out.append(
            SessionEnd(
                device_id=self.device_id,
                seq=UNNUMBERED,
                ts=now,
                session_id=s.session_id,
                started_at=s.started_at,
                ended_at=ended_at,
                end_reason=reason,
                summary=s.acc.summary((ended_at - s.started_at).total_seconds()),
            )
        )
        self._open = None
        return out

    def _flush(self, s: _Open, now: datetime) -> SampleBatch:
        batch = SampleBatch(
            device_id=self.device_id,
            seq=UNNUMBERED,
            ts=now,
            session_id=s.session_id,
            samples=tuple(s.pending),
        )
        s.pending = []
        return batch
