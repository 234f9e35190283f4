"""The only place where bytes become messages and messages become bytes.

`decode_uplink` checks, in order: size, topic, JSON, schema (strict: unknown fields, wrong types and
naive datetimes are errors), schema version, that the body's kind and device id match the topic, and
physical ranges. Each failure raises ContractError with its Reason, ready for the quarantine table.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TypeVar

import msgspec

from contract import SCHEMA_VERSION
from contract.errors import ContractError, Reason
from contract.limits import MAX_FUTURE_SKEW, check_ranges
from contract.messages import (
    CommitMark,
    CommittedBatch,
    Notice,
    SafetyGate,
    SyncRequest,
    UplinkMessage,
    kind_of,
)
from contract.topics import Downlink, ParsedTopic, Uplink, parse_downlink, parse_uplink

MAX_PAYLOAD_BYTES = 64 * 1024
SUPPORTED_VERSIONS = frozenset({SCHEMA_VERSION})

M = TypeVar("M", bound="UplinkMessage | DownlinkMessage | SyncRequest")
_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[UplinkMessage] = msgspec.json.Decoder(UplinkMessage)


class _VersionProbe(msgspec.Struct):
    schema_version: int = SCHEMA_VERSION


_probe = msgspec.json.Decoder(_VersionProbe)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


_BOUND = re.compile(r"^Expected `(int|float)` (<=|>=|<|>) ")


def _schema_error(payload: bytes, exc: msgspec.ValidationError) -> ContractError:
    try:
        version = _probe.decode(payload).schema_version
    except (msgspec.DecodeError, RecursionError):
        version = SCHEMA_VERSION
    if version not in SUPPORTED_VERSIONS:
        return ContractError(Reason.UNKNOWN_VERSION, f"schema_version {version} is not supported ({exc})")
    if _BOUND.match(str(exc)):  # a number outside its declared bounds (e.g. a level beyond a smallint)
        return ContractError(Reason.OUT_OF_RANGE, str(exc))
    return ContractError(Reason.SCHEMA, str(exc))


def _strict_decode(decoder: msgspec.json.Decoder[M], payload: bytes) -> M:
    """JSON -> frozen message, or ContractError: not JSON, schema, out of range, unknown version."""
    try:
        message = decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise _schema_error(payload, exc) from None
    except msgspec.DecodeError as exc:
        raise ContractError(Reason.NOT_JSON, str(exc)) from None
    except RecursionError:  # msgspec's nesting limit: valid JSON, but no message of ours is that deep
        raise ContractError(Reason.NOT_JSON, "JSON nested too deeply") from None
    version = message.schema_version
    if version not in SUPPORTED_VERSIONS:
        raise ContractError(Reason.UNKNOWN_VERSION, f"schema_version {version} is not supported")
    return message


def _check_size(payload: bytes, max_bytes: int) -> None:
    if len(payload) > max_bytes:
        raise ContractError(Reason.OVERSIZED, f"{len(payload)} bytes > limit {max_bytes}")


# The topics of valid uplinks, parsed: a consumer sees each device's few topics over and over, and parsing
# (split, device-id check, kind lookup) was a tenth of decoding a sample batch. Only topics that parse are
# kept (an error is raised again each time); the table is emptied when full, so it stays bounded.
_TOPIC_CACHE_MAX = 100_000
_topics: dict[str, ParsedTopic] = {}


def _parsed_uplink(topic: str) -> ParsedTopic:
    parsed = _topics.get(topic)
    if parsed is None:
        parsed = parse_uplink(topic)
        if len(_topics) >= _TOPIC_CACHE_MAX:
            _topics.clear()
        _topics[topic] = parsed
    return parsed


def decode_uplink(
    topic: str, payload: bytes, now: datetime, *, max_bytes: int = MAX_PAYLOAD_BYTES
) -> UplinkMessage:
    """Decode and validate one uplink message, or raise ContractError saying why not."""
    _check_size(payload, max_bytes)
    parsed = _parsed_uplink(topic)
    if parsed.kind is Uplink.SYNC:
        raise ContractError(Reason.TOPIC_MISMATCH, f"{topic!r} carries sync requests: decode_sync reads them")
    message = _strict_decode(_decoder, payload)
    if kind_of(message) is not parsed.kind:
        raise ContractError(Reason.TOPIC_MISMATCH, f"body kind {kind_of(message).value!r} on topic {topic!r}")
    if message.device_id != parsed.device_id:
        raise ContractError(
            Reason.DEVICE_MISMATCH,
            f"body device_id {message.device_id!r} != topic device {parsed.device_id!r}",
        )
    check_ranges(message, now)
    return message


_sync_decoder: msgspec.json.Decoder[SyncRequest] = msgspec.json.Decoder(SyncRequest)


def decode_sync(
    topic: str, payload: bytes, now: datetime, *, max_bytes: int = MAX_PAYLOAD_BYTES
) -> SyncRequest:
    """Decode a device's SyncRequest on `mf/v1/<id>/up/sync`, or raise ContractError saying why not."""
    _check_size(payload, max_bytes)
    parsed = _parsed_uplink(topic)
    if parsed.kind is not Uplink.SYNC:
        raise ContractError(Reason.TOPIC_MISMATCH, f"a sync request on {topic!r}")
    message = _strict_decode(_sync_decoder, payload)
    if message.device_id != parsed.device_id:
        raise ContractError(
            Reason.DEVICE_MISMATCH,
            f"body device_id {message.device_id!r} != topic device {parsed.device_id!r}",
        )
    if message.floor > message.next_seq:
        raise ContractError(Reason.OUT_OF_RANGE, f"floor {message.floor} > next_seq {message.next_seq}")
    if message.ts > now + MAX_FUTURE_SKEW:
        raise ContractError(Reason.OUT_OF_RANGE, f"ts={message.ts.isoformat()} is in the future")
    return message


def decode_any(payload: bytes) -> UplinkMessage:
    """Decode without topic checks (the edge outbox reading its own rows, tests, tools)."""
    return _decoder.decode(payload)


DownlinkMessage = Notice | SafetyGate | CommitMark
_DOWNLINK_KIND: dict[Downlink, type[DownlinkMessage]] = {
    Downlink.NOTICE: Notice,
    Downlink.GATE: SafetyGate,
    Downlink.COMMITTED: CommitMark,
}
_downlink_decoder: msgspec.json.Decoder[DownlinkMessage] = msgspec.json.Decoder(DownlinkMessage)


def decode_downlink(topic: str, payload: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> DownlinkMessage:
    """Decode a notice, safety gate or commit mark addressed to one device (the agent's side)."""
    _check_size(payload, max_bytes)
    device_id, kind = parse_downlink(topic)
    expected = _DOWNLINK_KIND.get(kind)
    if expected is None:
        raise ContractError(Reason.TOPIC_MISMATCH, f"{kind.value!r} is not a notice, gate or commit topic")
    message = _strict_decode(_downlink_decoder, payload)
    if not isinstance(message, expected):
        raise ContractError(Reason.TOPIC_MISMATCH, f"body is a {type(message).__name__} on {topic!r}")
    if message.device_id != device_id:
        raise ContractError(
            Reason.DEVICE_MISMATCH, f"body device_id {message.device_id!r} != topic {device_id!r}"
        )
    return message


# --- the cloud-internal alert feed (topics.COMMITTED_FEED): msgpack, the device payloads as raw bytes ---
_feed_encoder = msgspec.msgpack.Encoder()
_feed_decoder: msgspec.msgpack.Decoder[CommittedBatch] = msgspec.msgpack.Decoder(CommittedBatch)


def encode_feed(batch: CommittedBatch) -> bytes:
    return _feed_encoder.encode(batch)


def decode_feed(payload: bytes) -> CommittedBatch:
    """A CommittedBatch from the alert feed, or ContractError (not msgpack, schema, unknown version).
    The inner messages are not checked here: the engine decodes each as the uplink it is."""
    try:
        batch = _feed_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise ContractError(Reason.SCHEMA, str(exc)) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ContractError(Reason.NOT_JSON, f"not a msgpack CommittedBatch: {exc}") from None
    if batch.schema_version not in SUPPORTED_VERSIONS:
        raise ContractError(Reason.UNKNOWN_VERSION, f"schema_version {batch.schema_version} is not supported")
    return batch
