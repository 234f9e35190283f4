"""Publish a treatment protocol: validate it for every target model, sign it, store it, and send it as
retained desired state (QoS 1) on each target device's `mf/v1/<id>/down/protocol`.

    protocol = parse_protocol(path.read_bytes())
    result = await publish(conn, protocol, Targets(models=("mf-home-1",)), load_signing_key(), mqtt_url)

Order matters: nothing is stored or sent unless the protocol passes the hard limits of every model it
reaches (`contract.protocol.check`; the error names each field and limit). The store comes before the
broker, so a publish cut short by a broker outage is completed by running it again (same version, same
document: idempotent; the stored signed document is re-sent). A target device whose safety gate is
blocked (an open blocking contraindication: cloud/protocols/gate.py) is skipped and reported, unless
the publisher overrides the gate with a reason (`override_gate`), recorded per device. The send is
paced (`rate_per_s`) with a bounded window of unacknowledged messages and reports progress; a refusal by the broker (PUBACK failure code, e.g. an ACL) is counted
(the MQTT client is cloud.runtime's publisher: TLS, credentials, PUBACK reason codes).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from cloud.protocols import gate, store
from contract.protocol import ProtocolRejected, TreatmentProtocol, Violation, check
from contract.signing import SigningKey
from contract.topics import Downlink, downlink

SIGNING_KEY_ENV = "MICROFLEET_SIGNING_KEY_FILE"
DEFAULT_RATE_PER_S = 500.0
DEFAULT_INFLIGHT = 100
ACK_TIMEOUT_S = 30.0
Progress = Callable[[int, int], None]


class PublishError(Exception):
    """The protocol could not be published (configuration, targets, broker); the message says what to do."""


class InvalidProtocol(ValueError):
    """The document is not a valid TreatmentProtocol (schema)."""


class Refused(ValueError):
    """The protocol breaks the hard limits of at least one target model."""

    def __init__(self, protocol_id: str, by_model: Mapping[str, list[Violation]]) -> None:
        self.by_model = dict(by_model)
        lines = [f"{model}: {v}" for model, vs in sorted(self.by_model.items()) for v in vs]
        super().__init__(f"protocol {protocol_id} refused: " + "; ".join(lines))


class GateBlocked(PublishError):
    """Every target device has a blocked safety gate: nothing was stored or sent."""

    def __init__(self, devices: Sequence[str]) -> None:
        self.devices = list(devices)
        shown = ", ".join(self.devices[:10]) + (" ..." if len(self.devices) > 10 else "")
        super().__init__(
            f"every target device has a blocked safety gate (an open blocking contraindication): {shown}; "
            "nothing was stored or sent. Clear the device's profile, or override the gate with a reason "
            "if a physician approved the treatment"
        )


@dataclass(frozen=True, slots=True)
class Targets:
    models: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (self.models or self.tags or self.devices):
            raise PublishError("no target: give at least one model, tag or device")


@dataclass(frozen=True, slots=True)
class PublishResult:
    protocol_id: str
    version: int
    new_version: bool
    devices: int
    sent: int
    refused: int
    seconds: float
    skipped_blocked: tuple[str, ...] = ()  # devices left out: their safety gate is blocked
    gate_overridden: tuple[str, ...] = ()  # blocked devices sent to anyway (override_gate, recorded)


def load_signing_key(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> SigningKey:
    e = os.environ if env is None else env
    where = path or e.get(SIGNING_KEY_ENV)
    if not where:
        raise PublishError(
            f"no signing key: set {SIGNING_KEY_ENV} (a PEM made by `microfleet keys generate --out FILE`)"
        )
    try:
        return SigningKey.from_pem(Path(where).read_bytes())
    except (OSError, ValueError) as exc:
        raise PublishError(f"signing key {where}: {exc}") from None


def parse_protocol(data: bytes) -> TreatmentProtocol:
    try:
        return msgspec.json.decode(data, type=TreatmentProtocol)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise InvalidProtocol(f"not a valid treatment protocol: {exc}") from None


def validate(protocol: TreatmentProtocol, models: Iterable[str]) -> dict[str, list[Violation]]:
    """Pure: the violations per model (empty dict: safe for all of them)."""
    found: dict[str, list[Violation]] = {}
    for model in sorted(set(models)):
        try:
            check(protocol, model)
        except ProtocolRejected as exc:
            found[model] = exc.violations
    return found


def check_all(protocol: TreatmentProtocol, models: Iterable[str]) -> None:
    problems = validate(protocol, models)
    if problems:
        raise Refused(protocol.protocol_id, problems)


def models_of(protocol: TreatmentProtocol, targets: Targets, found: Sequence[store.Target]) -> set[str]:
    """Every model the publication reaches; a device that never reported counts as each listed model."""
    models = set(targets.models) | {t.model for t in found if t.model}
    if any(t.model is None for t in found):
        models |= set(protocol.models)
    return models


async def publish(
    conn: store.Conn,
    protocol: TreatmentProtocol,
    targets: Targets,
    key: SigningKey,
    mqtt_url: str,
    *,
    by: str = "",
    rate_per_s: float = DEFAULT_RATE_PER_S,
    inflight: int = DEFAULT_INFLIGHT,
    on_progress: Progress | None = None,
    ca_file: str | None = None,
    override_gate: str = "",
    now: datetime | None = None,
) -> PublishResult:
    """`override_gate`: a reason to send to devices whose safety gate is blocked too (recorded in
    `protocol_gate_overrides`); empty: they are skipped and listed in `skipped_blocked`."""
    t0 = time.monotonic()
    check_all(protocol, targets.models or protocol.models)
    found = await store.resolve(conn, targets.models, targets.tags, targets.devices)
    if not found:
        raise PublishError(
            f"no device matches {store.selectors(targets.models, targets.tags, targets.devices)}: "
            "nothing was stored or sent (devices appear once they have connected, or name them with --device)"
        )
    check_all(protocol, models_of(protocol, targets, found))
    blocked = sorted(await gate.blocked(conn, [t.device_id for t in found], now or datetime.now(UTC)))
    overridden: list[str] = []
    if blocked and override_gate.strip():
        overridden = blocked
    elif blocked:
        found = [t for t in found if t.device_id not in set(blocked)]
        if not found:
            raise GateBlocked(blocked)
    signed = key.sign(protocol)
    selector = store.selectors(targets.models, targets.tags, targets.devices)
    found = [store.Target(t.device_id, t.model, t.selector or selector) for t in found]
    new = await store.save(conn, protocol, signed, by, found, overridden, override_gate.strip())
    stored = await store.get(conn, protocol.protocol_id, protocol.version)
    payload = msgspec.json.encode(stored.signed if stored else signed)
    messages = [(downlink(t.device_id, Downlink.PROTOCOL), payload) for t in found]
    sent, refused = await asyncio.to_thread(
        publish_retained,
        mqtt_url,
        messages,
        rate_per_s=rate_per_s,
        inflight=inflight,
        on_progress=on_progress,
        ca_file=ca_file,
    )
    return PublishResult(
        protocol.protocol_id,
        protocol.version,
        new,
        len(found),
        sent,
        refused,
        time.monotonic() - t0,
        tuple(d for d in blocked if d not in overridden),
        tuple(overridden),
    )


def publish_retained(
    mqtt_url: str,
    messages: Sequence[tuple[str, bytes]],
    *,
    rate_per_s: float = DEFAULT_RATE_PER_S,
    inflight: int = DEFAULT_INFLIGHT,
    ack_timeout_s: float = ACK_TIMEOUT_S,
    on_progress: Progress | None = None,
    ca_file: str | None = None,
) -> tuple[int, int]:
    """Send each (topic, payload) retained at QoS 1, paced and windowed (`inflight` at a time) through the
    cloud runtime's publisher. Returns (taken by the broker, refused by it: PUBACK >= 0x80). A retained
    message answered 0x10 (no subscriber yet) is stored by the broker: taken."""
    from cloud.runtime.publisher import Outgoing, Publisher

    if rate_per_s <= 0 or inflight <= 0:
        raise ValueError("rate_per_s and inflight must be > 0")
    publisher = Publisher(
        mqtt_url, f"mf-protocols-{uuid.uuid4().hex[:8]}", ca_file=ca_file, inflight=inflight
    )
    where = publisher.mqtt.redacted
    publisher.start()
    try:
        if not publisher.wait_connected(10):
            why = publisher.mqtt.refusal or "timeout"
            raise PublishError(f"broker {where} refused or did not answer the connection: {why}")
        taken = refused = 0
        step = max(1, len(messages) // 20)
        start = time.monotonic()
        for i in range(0, len(messages), inflight):
            delay = start + i / rate_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            chunk = messages[i : i + inflight]
            outcomes = publisher.publish_many([Outgoing(t, p, True) for t, p in chunk], ack_timeout_s)
            lost = [o for o in outcomes if o.reason is None]
            if lost:
                raise PublishError(
                    f"no acknowledgement from the broker ({lost[0]}) after {taken + refused} messages: "
                    "run the same publish again to complete it"
                )
            n_refused = sum(1 for o in outcomes if not o.accepted)
            before = taken + refused
            taken += len(outcomes) - n_refused
            refused += n_refused
            done = taken + refused
            if on_progress is not None and (done // step > before // step or done == len(messages)):
                on_progress(done, len(messages))
        return taken, refused
    finally:
        publisher.stop()
