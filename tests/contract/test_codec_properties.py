"""Property tests for the codec: every valid message survives the wire unchanged, and no input at all makes
`decode_uplink` fail with anything but ContractError (the ingest loop quarantines those and goes on)."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract import codec, topics
from contract.codec import DownlinkMessage
from contract.errors import ContractError
from contract.messages import UplinkMessage, kind_of
from tests.contract.strategies import (
    DOWNLINK_STRATEGIES,
    NOW,
    STRATEGIES,
    device_ids,
    downlink_messages,
    uplink_messages,
)

# JSON values of every shape, to splice into otherwise valid messages.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def topic_for(message: UplinkMessage) -> str:
    return topics.uplink(message.device_id, kind_of(message))


@pytest.mark.parametrize("message_type", list(STRATEGIES), ids=lambda t: t.__name__)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_of_every_message_type(message_type: type[UplinkMessage], data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[message_type])
    payload = codec.encode(message)

    decoded = codec.decode_uplink(topic_for(message), payload, NOW)

    assert type(decoded) is message_type
    assert decoded == message
    assert codec.decode_any(payload) == message
    assert codec.encode(decoded) == payload  # stable: re-encoding gives the same bytes


@given(message=uplink_messages)
def test_payload_is_a_json_object_tagged_with_its_kind(message: UplinkMessage) -> None:
    body = msgspec.json.decode(codec.encode(message))

    assert isinstance(body, dict)
    assert body["kind"] == kind_of(message).value
    assert body["device_id"] == message.device_id
    assert body["seq"] == message.seq


@settings(max_examples=300)
@given(payload=st.binary(max_size=2048), device_id=device_ids, kind=st.sampled_from(topics.Uplink))
def test_arbitrary_bytes_raise_only_contract_errors(
    payload: bytes, device_id: str, kind: topics.Uplink
) -> None:
    with contextlib.suppress(ContractError):
        codec.decode_uplink(topics.uplink(device_id, kind), payload, NOW)


@settings(max_examples=300)
@given(value=json_values, kind=st.sampled_from(topics.Uplink))
def test_arbitrary_json_raises_only_contract_errors(value: object, kind: topics.Uplink) -> None:
    with contextlib.suppress(ContractError):
        codec.decode_uplink(topics.uplink("dev-1", kind), msgspec.json.encode(value), NOW)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(message=uplink_messages, data=st.data())
def test_a_valid_message_with_one_field_mangled_raises_only_contract_errors(
    message: UplinkMessage, data: st.DataObject
) -> None:
    body = msgspec.json.decode(codec.encode(message))
    assert isinstance(body, dict)
    key = data.draw(st.sampled_from(sorted(body)) | st.text(max_size=12), label="key")
    body[key] = data.draw(json_values, label="value")
    try:
        decoded = codec.decode_uplink(topic_for(message), msgspec.json.encode(body), NOW)
    except ContractError:
        return
    # Accepted: then it is a well-formed message for the topic it came on.
    assert kind_of(decoded) is kind_of(message)
    assert decoded.device_id == message.device_id


@given(message=uplink_messages, cut=st.integers(min_value=1))
def test_truncated_payloads_are_rejected(message: UplinkMessage, cut: int) -> None:
    payload = codec.encode(message)
    truncated = payload[: max(0, len(payload) - cut)]
    with pytest.raises(ContractError):
        codec.decode_uplink(topic_for(message), truncated, NOW)


def downlink_topic_for(message: DownlinkMessage) -> str:
    tag = type(message).__struct_config__.tag
    assert isinstance(tag, str)
    return topics.downlink(message.device_id, topics.Downlink(tag))


@pytest.mark.parametrize("message_type", list(DOWNLINK_STRATEGIES), ids=lambda t: t.__name__)
@settings(max_examples=150)
@given(data=st.data())
def test_round_trip_of_every_downlink_message_type(
    message_type: type[DownlinkMessage], data: st.DataObject
) -> None:
    message = data.draw(DOWNLINK_STRATEGIES[message_type])
    payload = codec.encode(message)

    decoded = codec.decode_downlink(downlink_topic_for(message), payload)

    assert type(decoded) is message_type
    assert decoded == message


@settings(max_examples=200)
@given(message=downlink_messages, data=st.data())
def test_a_downlink_message_with_one_field_mangled_raises_only_contract_errors(
    message: DownlinkMessage, data: st.DataObject
) -> None:
    body = msgspec.json.decode(codec.encode(message))
    assert isinstance(body, dict)
    key = data.draw(st.sampled_from(sorted(body)) | st.text(max_size=12), label="key")
    body[key] = data.draw(json_values, label="value")
    try:
        decoded = codec.decode_downlink(downlink_topic_for(message), msgspec.json.encode(body))
    except ContractError:
        return
    assert type(decoded) is type(message)
    assert decoded.device_id == message.device_id


@settings(max_examples=200)
@given(payload=st.binary(max_size=1024), device_id=device_ids, kind=st.sampled_from(topics.Downlink))
def test_arbitrary_downlink_bytes_raise_only_contract_errors(
    payload: bytes, device_id: str, kind: topics.Downlink
) -> None:
    with contextlib.suppress(ContractError):
        codec.decode_downlink(topics.downlink(device_id, kind), payload)
