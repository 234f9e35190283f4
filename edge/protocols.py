"""The treatment protocol on the device: receive it signed, check it, apply it between sessions, enforce it.

Downlink `mf/v1/<id>/down/protocol` (retained, QoS 1) carries a `SignedDocument` whose payload is a
`TreatmentProtocol`. On each one the agent:
1. verifies the signature against its trust store (`MICROFLEET_EDGE_TRUSTED_KEYS`, a JSON file of
   TrustedKey entries: unknown key, expired key or tampered payload -> rejected);
2. decodes the protocol strictly and checks the hard limits of its own model again
   (`contract.protocol.check`), and that it is not older than the active version of the same protocol;
3. stages it; it becomes active only between sessions (at once if none runs, else when the session
   ends), is written atomically to `<data_dir>/protocol.json` (the last good one) and reported:
   DeviceEvent(PROTOCOL_APPLIED, value=version, detail=protocol_id), and a new birth Status carrying
   protocol_id/protocol_version (`on_applied` lets the link reconnect so birth and will agree);
4. on any failure: DeviceEvent(PROTOCOL_REJECTED, value=version, detail="<id> v<version>: <reason>")
   and the last good protocol stays active. The retained copy arrives again on every reconnect: an
   unchanged document is recognised and neither applied nor reported twice.

During a session the `ProtocolRuntime` enforces it with edge/safety.py (pure) and keeps the user's
local-day usage (sessions, active seconds) in `<data_dir>/usage.json`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import msgspec

from contract.errors import ContractError
from contract.messages import DeviceEvent, EventType, Zone
from contract.protocol import MODEL_LIMITS, ModelLimits, ProtocolRejected, TreatmentProtocol, check
from contract.signing import SignedDocument, TrustedKey, TrustStore
from edge.clock import Clock
from edge.notices import SessionRefused
from edge.safety import (
    DayUsage,
    Envelope,
    HeldLimit,
    OutputStage,
    SessionGuard,
    accrue,
    after_start,
    envelope,
    refuse_start,
    usage_on,
)

log = logging.getLogger(__name__)
Emit = Callable[[DeviceEvent], None]


class TrustFileError(ValueError):
    """The trusted-keys file cannot be read; the message says which file and what to do."""


def load_trust(path: Path | None) -> TrustStore:
    """A TrustStore from a JSON file holding one TrustedKey or a list of them (no file: trusts nothing)."""
    if path is None:
        return TrustStore([])
    try:
        raw = path.read_bytes()
        keys = msgspec.json.decode(raw, type=list[TrustedKey] | TrustedKey)
    except (OSError, msgspec.DecodeError) as exc:
        raise TrustFileError(
            f"trusted keys file {path}: {exc}; it must hold the JSON printed by `microfleet keys generate` "
            "(one object, or a list of them)"
        ) from None
    return TrustStore(keys if isinstance(keys, list) else [keys])


class _Stored(msgspec.Struct, frozen=True):
    signed: SignedDocument
    accepted_at: datetime


class _Usage(msgspec.Struct, frozen=True):
    day: str
    sessions: int
    active_s: float


class _Label(msgspec.Struct):
    protocol_id: str = "?"
    version: int = 0


def _label(doc: SignedDocument) -> tuple[str, int]:
    """Id and version read from an UNVERIFIED payload, only to say which document was rejected."""
    try:
        label = msgspec.json.decode(base64.b64decode(doc.payload), type=_Label)
    except (ValueError, msgspec.DecodeError):
        return "?", 0
    return label.protocol_id[:64], label.version


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class ProtocolRuntime:
    def __init__(
        self,
        device_id: str,
        model: str,
        clock: Clock,
        emit: Emit,
        trust: TrustStore,
        data_dir: Path,
        *,
        tz_offset_min: int = 0,
        output: OutputStage | None = None,
        on_applied: Callable[[], None] | None = None,
    ) -> None:
        self._device_id = device_id
        self._limits: ModelLimits | None = MODEL_LIMITS.get(model)
        self._model = model
        self._clock = clock
        self._emit = emit
        self._trust = trust
        self._file = data_dir / "protocol.json"
        self._usage_file = data_dir / "usage.json"
        self._tz = tz_offset_min
        self.output: OutputStage = output or HeldLimit()
        self.on_applied = on_applied
        self.active: TreatmentProtocol | None = None
        self._active_doc: SignedDocument | None = None
        self.staged: tuple[TreatmentProtocol, SignedDocument] | None = None
        self._seen: set[bytes] = set()  # digests of documents already handled (retained redelivery)
        self.usage: DayUsage | None = self._load_usage()
        self._guard: SessionGuard | None = None
        self._session: tuple[str, datetime] | None = None
        self.stopped_for_safety = False
        self.handled = asyncio.Event()  # set after each new document is applied, staged or rejected
        self._load_active()

    # -- desired state -------------------------------------------------------------------------------

    def reported(self) -> tuple[str, int]:
        p = self.active
        return (p.protocol_id, p.version) if p else ("", 0)

    async def on_protocol(self, topic: str, payload: bytes) -> None:
        """Downlink handler for `mf/v1/<id>/down/protocol`."""
        self.receive(payload)
        self.handled.set()

    def receive(self, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message: keep what runs
        digest = hashlib.sha256(payload).digest()
        if digest in self._seen:
            return
        self._seen.add(digest)
        now = self._clock.now()
        try:
            doc = msgspec.json.decode(payload, type=SignedDocument)
        except msgspec.DecodeError as exc:
            self._reject("?", 0, f"not a signed document: {exc}")
            return
        try:
            protocol: TreatmentProtocol = self._trust.verify_as(doc, now, TreatmentProtocol)
        except ContractError as exc:
            self._reject(*_label(doc), exc.detail)
            return
        reason = self._refusal(protocol)
        if reason is not None:
            self._reject(protocol.protocol_id, protocol.version, reason)
            return
        self.staged = (protocol, doc)
        if self._session is None:
            self.apply_staged()
        else:
            log.info(
                "%s: %s v%d staged until the session ends",
                self._device_id,
                protocol.protocol_id,
                protocol.version,
            )

    def _refusal(self, protocol: TreatmentProtocol) -> str | None:
        try:
            check(protocol, self._model)
        except ProtocolRejected as exc:
            return "; ".join(map(str, exc.violations))
        a = self.active
        if a is not None and a.protocol_id == protocol.protocol_id and protocol.version < a.version:
            return f"version {protocol.version} is older than the active version {a.version}"
        return None

    def apply_staged(self) -> bool:
        """Make the staged protocol active (between sessions only). True if one was applied."""
        if self.staged is None or self._session is not None:
            return False
        protocol, doc = self.staged
        self.staged = None
        a = self.active
        if a is not None and (a.protocol_id, a.version) == (protocol.protocol_id, protocol.version):
            return False  # already running (the same version signed again)
        _write_atomic(self._file, msgspec.json.encode(_Stored(doc, self._clock.now())))
        self.active, self._active_doc = protocol, doc
        self._event(EventType.PROTOCOL_APPLIED, protocol.protocol_id, float(protocol.version))
        log.info("%s: protocol %s v%d applied", self._device_id, protocol.protocol_id, protocol.version)
        if self.on_applied is not None:
            self.on_applied()
        return True

    def _reject(self, protocol_id: str, version: int, reason: str) -> None:
        detail = f"{protocol_id} v{version}: {reason}"
        log.error("%s: protocol rejected (%s); keeping %s", self._device_id, detail, self.reported())
        self._event(EventType.PROTOCOL_REJECTED, detail, float(version) if version else None)

    # -- sessions ------------------------------------------------------------------------------------

    def check_may_start(self) -> None:
        """Raise SessionRefused beyond the protocol's daily limits (and tell the cloud)."""
        now = self._clock.now()
        refusal = refuse_start(self._envelope(), usage_on(self.usage, now, self._tz))
        if refusal is not None:
            self._event(EventType.SESSION_REFUSED, refusal.detail, float(refusal.limit))
            raise SessionRefused(refusal.message)

    def session_started(self, session_id: str, now: datetime) -> None:
        self._session = (session_id, now)
        self._guard = SessionGuard(self._envelope())
        self.stopped_for_safety = False
        self.usage = after_start(self.usage, now, self._tz)
        self._save_usage()

    def observe(self, zone: Zone | None, level: int, contact: bool, t: datetime) -> bool:
        """One reading: limit the output, record interventions. True: end the session (SAFETY_LIMIT)."""
        if self._session is None or self._guard is None:
            return False
        session_id, started = self._session
        if contact:
            self.usage = accrue(self.usage, t, self._tz, 1.0)
        today = usage_on(self.usage, t, self._tz)
        decision = self._guard.step(zone, level, (t - started).total_seconds(), today.active_s)
        self.output.limit_current(decision.output_ua)
        for what in decision.interventions:
            self._event(EventType.INTERVENTION, what.detail, what.value, session_id)
        if decision.end:
            self.stopped_for_safety = True
        return decision.end

    def session_ended(self) -> None:
        self._session = None
        self._guard = None
        self.output.limit_current(0.0)
        self._save_usage()
        self.apply_staged()

    # -- helpers -------------------------------------------------------------------------------------

    def _envelope(self) -> Envelope:
        limits = self._limits or ModelLimits(
            model=self._model, rated_max_current_ua=0.0, eye_max_current_ua=0.0, auto_off_s=0
        )  # unknown model: no output at all
        return envelope(self.active, limits)

    def _event(
        self, event: EventType, detail: str, value: float | None, session_id: str | None = None
    ) -> None:
        now = self._clock.now()
        self._emit(
            DeviceEvent(
                device_id=self._device_id,
                seq=0,
                ts=now,
                event=event,
                at=now,
                session_id=session_id,
                value=value,
                detail=detail[:200],
            )
        )

    def _load_active(self) -> None:
        """The last good protocol from the data folder, checked again (a corrupt file is ignored)."""
        try:
            stored = msgspec.json.decode(self._file.read_bytes(), type=_Stored)
            protocol: TreatmentProtocol = self._trust.verify_as(
                stored.signed, stored.accepted_at, TreatmentProtocol
            )
            check(protocol, self._model)
        except FileNotFoundError:
            return
        except (msgspec.DecodeError, ContractError, ProtocolRejected) as exc:
            log.error(
                "%s: stored protocol %s not usable (%s): running on the model's limits",
                self._device_id,
                self._file,
                exc,
            )
            return
        self.active, self._active_doc = protocol, stored.signed
        self._seen.add(hashlib.sha256(msgspec.json.encode(stored.signed)).digest())

    def _load_usage(self) -> DayUsage | None:
        try:
            u = msgspec.json.decode(self._usage_file.read_bytes(), type=_Usage)
            return DayUsage(datetime.fromisoformat(u.day).date(), u.sessions, u.active_s)
        except (FileNotFoundError, msgspec.DecodeError, ValueError):
            return None

    def _save_usage(self) -> None:
        if self.usage is not None:
            u = self.usage
            _write_atomic(
                self._usage_file, msgspec.json.encode(_Usage(u.day.isoformat(), u.sessions, u.active_s))
            )
