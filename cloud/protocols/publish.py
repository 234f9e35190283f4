"""Publish a treatment protocol: validate it for every target model, sign it, store it, and send it as
retained desired state (QoS 1) on each target device's `mf/v1/<id>/down/protocol`.

    protocol = parse_protocol(path.read_bytes())
    result = await publish(conn, protocol, Targets(models=("mf-home-1",)), load_signing_key(), mqtt_url)

Order matters: nothing is stored or sent unless the protocol passes the hard limits of every model it
reaches (`contract.protocol.check`; the error names each field and limit). The store comes before the
broker, so a publish cut short by a broker outage is completed by running it again (same version, same
document: idempotent). The send is paced (`rate_per_s`) with a bounded window of unacknowledged
messages and reports progress; a refusal by the broker (PUBACK failure code, e.g. an ACL) is counted.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from cloud.protocols import store
from contract.mqtturl import parse_mqtt_url
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
) -> PublishResult:
    t0 = time.monotonic()
    check_all(protocol, targets.models or protocol.models)
    found = await store.resolve(conn, targets.models, targets.tags, targets.devices)
    if not found:
        raise PublishError(
            f"no device matches {store.selectors(targets.models, targets.tags, targets.devices)}: "
            "nothing was stored or sent (devices appear once they have connected, or name them with --device)"
        )
    check_all(protocol, models_of(protocol, targets, found))
    signed = key.sign(protocol)
    selector = store.selectors(targets.models, targets.tags, targets.devices)
    found = [store.Target(t.device_id, t.model, t.selector or selector) for t in found]
    new = await store.save(conn, protocol, signed, by, found)
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
    )
    return PublishResult(
        protocol.protocol_id, protocol.version, new, len(found), sent, refused, time.monotonic() - t0
    )


def publish_retained(
    mqtt_url: str,
    messages: Sequence[tuple[str, bytes]],
    *,
    rate_per_s: float = DEFAULT_RATE_PER_S,
    inflight: int = DEFAULT_INFLIGHT,
    ack_timeout_s: float = ACK_TIMEOUT_S,
    on_progress: Progress | None = None,
) -> tuple[int, int]:
    """Send each (topic, payload) retained at QoS 1, paced and windowed. Returns (acknowledged, refused)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.reasoncodes import ReasonCode

    if rate_per_s <= 0 or inflight <= 0:
        raise ValueError("rate_per_s and inflight must be > 0")
    addr = parse_mqtt_url(mqtt_url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"mf-protocols-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(inflight)
    if addr.username:
        client.username_pw_set(addr.username, addr.password)
    if addr.tls:
        client.tls_set()
    connected = threading.Event()
    failures: list[str] = []
    refused: set[int] = set()

    def on_connect(c: object, u: object, flags: object, rc: ReasonCode, p: object) -> None:
        if rc.is_failure:
            failures.append(str(rc))
        connected.set()

    def on_publish(c: object, u: object, mid: int, rc: ReasonCode, p: object) -> None:
        if rc.is_failure:
            refused.add(mid)

    client.on_connect = on_connect
    client.on_publish = on_publish
    try:
        client.connect(addr.host, addr.port, keepalive=30)
    except OSError as exc:
        raise PublishError(f"broker {addr.host}:{addr.port} unreachable: {exc}") from None
    client.loop_start()
    try:
        if not connected.wait(10) or failures:
            raise PublishError(
                f"broker {addr.host}:{addr.port} refused the connection: {failures or 'timeout'}"
            )
        window: deque[mqtt.MQTTMessageInfo] = deque()
        acked = 0
        step = max(1, len(messages) // 20)

        def settle(info: mqtt.MQTTMessageInfo) -> None:
            nonlocal acked
            try:
                info.wait_for_publish(ack_timeout_s)
            except (RuntimeError, ValueError) as exc:
                raise PublishError(
                    f"broker connection lost after {acked} messages ({exc}): publish again"
                ) from None
            if not info.is_published():
                raise PublishError(
                    f"no acknowledgement from the broker within {ack_timeout_s}s after {acked} messages: "
                    "run the same publish again to complete it"
                )
            acked += 1
            if on_progress is not None and (acked % step == 0 or acked == len(messages)):
                on_progress(acked, len(messages))

        start = time.monotonic()
        for i, (topic, payload) in enumerate(messages):
            delay = start + i / rate_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            info = client.publish(topic, payload, qos=1, retain=True)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
            window.append(info)
            while len(window) >= inflight:
                settle(window.popleft())
        while window:
            settle(window.popleft())
        return acked - len(refused), len(refused)
    finally:
        client.disconnect()
        client.loop_stop()
