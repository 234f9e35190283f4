"""docs/asyncapi.yaml against the code: every channel parses with contract.topics, every message type of
contract.messages is documented on the channel of its kind, every example decodes with the real codec and
matches its documented schema, and the documented schemas accept what the codec produces (so neither the
document nor the code can drift without a test failing)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import jsonschema
import msgspec
import pytest
import yaml
from hypothesis import given, settings

from cloud.config import CloudConfig
from contract import codec, messages, topics
from contract.codec import DownlinkMessage
from contract.errors import ContractError
from contract.messages import SyncRequest, UplinkMessage
from tests.contract.strategies import downlink_messages, sync_requests, uplink_messages

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"
DOC: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)  # after every example's timestamps
UPLINK_TYPES: dict[str, type[UplinkMessage]] = {t.__name__: t for t in get_args(UplinkMessage)}
DOWNLINK_TYPES: dict[str, type[DownlinkMessage]] = {t.__name__: t for t in get_args(DownlinkMessage)}
# the sync request is an uplink kind but not telemetry (no seq, not in UplinkMessage): documented all the same
Message = UplinkMessage | DownlinkMessage | SyncRequest
MESSAGE_TYPES: dict[str, type[Message]] = {**UPLINK_TYPES, **DOWNLINK_TYPES, "SyncRequest": SyncRequest}
Kind = topics.Uplink | topics.Downlink
PLACEHOLDER = "{deviceId}"
# cloud-internal channels (no device's): their address, message type, and the codec that reads them
INTERNAL: dict[str, tuple[str, type[msgspec.Struct]]] = {
    "alertFeed": (topics.COMMITTED_FEED, messages.CommittedBatch),
}


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow local `$ref`s ('#/a/b/c') inside the document."""
    while "$ref" in node:
        ref: str = node["$ref"]
        assert ref.startswith("#/"), f"only local references are used, got {ref}"
        target: Any = DOC
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def parse(topic: str) -> tuple[str, Kind]:
    if "/down/" in topic:
        return topics.parse_downlink(topic)
    device_id, kind = topics.parse_uplink(topic)
    return device_id, kind


def build(device_id: str, kind: Kind) -> str:
    if isinstance(kind, topics.Uplink):
        return topics.uplink(device_id, kind)
    return topics.downlink(device_id, kind)


def channel_kind(channel: dict[str, Any]) -> Kind:
    return parse(channel["address"].replace(PLACEHOLDER, "dev-1"))[1]


def channel_messages() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(channel name, channel, resolved message) for every message of every channel."""
    return [
        (name, channel, resolve(message))
        for name, channel in DOC["channels"].items()
        if name not in INTERNAL
        for message in channel["messages"].values()
    ]


def examples() -> list[Any]:
    return [
        pytest.param(channel, message, example, id=f"{message['name']}-{example['name']}")
        for _, channel, message in channel_messages()
        for example in message.get("examples", [])
    ]


def validator_for(message_type: type[Message]) -> jsonschema.Draft7Validator:
    schema = {"$ref": f"#/components/schemas/{message_type.__name__}", "components": DOC["components"]}
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def test_document_is_asyncapi_3_with_json_payloads() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    assert DOC["defaultContentType"] == "application/json"
    for _, _, message in channel_messages():
        assert message["contentType"] == "application/json"


def test_every_channel_address_parses_and_every_kind_has_one_channel() -> None:
    kinds = []
    for name, channel in DOC["channels"].items():
        if name in INTERNAL:
            continue
        address = channel["address"]
        assert set(channel["parameters"]) == {"deviceId"}
        assert address.count(PLACEHOLDER) == 1
        for device_id in resolve(channel["parameters"]["deviceId"])["examples"]:
            parsed_id, kind = parse(address.replace(PLACEHOLDER, device_id))
            assert parsed_id == device_id
            assert address.replace(PLACEHOLDER, device_id) == build(device_id, kind)
        kinds.append(channel_kind(channel))
    assert len(kinds) == len(set(kinds))
    assert {k for k in kinds if isinstance(k, topics.Uplink)} == set(topics.Uplink)
    assert {k for k in kinds if isinstance(k, topics.Downlink)} == {
        kind_of_type(t) for t in DOWNLINK_TYPES.values()
    }


def test_every_message_type_is_documented_on_the_channel_of_its_kind() -> None:
    internal = {t.__name__ for _, t in INTERNAL.values()}
    documented = {n: m for n, m in DOC["components"]["messages"].items() if n not in internal}
    assert set(documented) == set(MESSAGE_TYPES)
    for name, message in documented.items():
        assert message["name"] == name
    on_channels = {}
    for _, channel, message in channel_messages():
        assert len(channel["messages"]) == 1
        on_channels[message["name"]] = channel_kind(channel)
    assert on_channels == {name: kind_of_type(t) for name, t in MESSAGE_TYPES.items()}


def test_every_tagged_struct_of_contract_messages_is_documented() -> None:
    tagged = {
        obj.__name__
        for obj in vars(messages).values()
        if isinstance(obj, type)
        and not obj.__name__.startswith("_")
        and issubclass(obj, msgspec.Struct)
        and isinstance(obj.__struct_config__.tag, str)
    }
    assert tagged == set(MESSAGE_TYPES) | {t.__name__ for _, t in INTERNAL.values()}
    assert tagged <= set(DOC["components"]["messages"])


def kind_of_type(message_type: type[Message]) -> Kind:
    tag = message_type.__struct_config__.tag
    assert isinstance(tag, str)
    is_uplink = message_type in UPLINK_TYPES.values() or message_type is SyncRequest
    return topics.Uplink(tag) if is_uplink else topics.Downlink(tag)


@pytest.mark.parametrize(("channel", "message", "example"), examples())
def test_example_decodes_with_the_codec(
    channel: dict[str, Any], message: dict[str, Any], example: dict[str, Any]
) -> None:
    payload = example["payload"]
    topic = channel["address"].replace(PLACEHOLDER, payload["device_id"])
    raw = json.dumps(payload).encode()  # YAML dates must be quoted strings, or this fails

    decoded: Message
    if "/down/" in topic:
        decoded = codec.decode_downlink(topic, raw)
    elif topic.endswith("/up/sync"):
        decoded = codec.decode_sync(topic, raw, NOW)
    else:
        decoded = codec.decode_uplink(topic, raw, NOW)
        assert decoded.seq == payload["seq"]

    assert type(decoded).__name__ == message["name"]
    assert decoded.device_id == payload["device_id"]


@pytest.mark.parametrize(("channel", "message", "example"), examples())
def test_example_matches_its_documented_schema(
    channel: dict[str, Any], message: dict[str, Any], example: dict[str, Any]
) -> None:
    validator_for(MESSAGE_TYPES[message["name"]]).validate(example["payload"])


def test_every_message_has_an_example() -> None:
    for _, _, message in channel_messages():
        assert message.get("examples"), f"{message['name']} has no example"


@settings(max_examples=200)
@given(message=uplink_messages | downlink_messages | sync_requests())
def test_documented_schemas_accept_what_the_codec_encodes(message: Message) -> None:
    validator_for(type(message)).validate(msgspec.json.decode(codec.encode(message)))


def test_documented_schemas_have_the_fields_and_enums_of_the_code() -> None:
    _, generated = msgspec.json.schema_components([UplinkMessage, DownlinkMessage, SyncRequest])
    documented = DOC["components"]["schemas"]
    for name, schema in generated.items():
        doc = documented[name]
        if "properties" in schema:
            assert set(doc["properties"]) == set(schema["properties"]), name
            assert set(doc["required"]) == set(schema["required"]), name
            assert doc["additionalProperties"] is False, name
        if "enum" in schema:
            assert sorted(doc["enum"]) == sorted(schema["enum"]), name
        if "prefixItems" in schema:  # array_like structs: the documented tuple has the same arity
            assert len(doc["items"]) == len(schema["prefixItems"]) == doc["minItems"] == doc["maxItems"], name


def test_operations_cover_every_channel_with_qos_1_and_retained_state() -> None:
    """The cloud receives every uplink and sends every downlink; status and the gate are retained."""
    covered = {}
    for operation in DOC["operations"].values():
        if operation["channel"]["$ref"].rsplit("/", 1)[1] in INTERNAL:
            continue
        channel = resolve(operation["channel"])
        kind = channel_kind(channel)
        assert operation["action"] == ("receive" if isinstance(kind, topics.Uplink) else "send")
        for ref in operation["messages"]:
            assert ref["$ref"].startswith(operation["channel"]["$ref"] + "/messages/")
        binding = operation["bindings"]["mqtt"]
        assert binding["qos"] == 1
        assert binding["retain"] is (kind in (topics.Uplink.STATUS, topics.Downlink.GATE))
        covered[kind] = operation
    assert set(covered) == {channel_kind(c) for n, c in DOC["channels"].items() if n not in INTERNAL}


def test_description_names_the_shared_subscription_ingest_uses() -> None:
    subscription = topics.shared(CloudConfig().ingest_group, topics.uplink_filter())
    assert subscription == "$share/ingest/mf/v1/+/up/#"
    assert subscription in DOC["info"]["description"]
    for operation in DOC["operations"].values():
        if operation["action"] == "receive":
            assert subscription in operation["description"]


@pytest.mark.parametrize("name", sorted(INTERNAL))
def test_internal_channels_match_the_code(name: str) -> None:
    """A cloud-internal channel: its address is the contract's constant (no device id can reach it), its
    one message documents the type's fields, QoS 1 not retained, and its example round-trips the codec."""
    address, message_type = INTERNAL[name]
    channel = DOC["channels"][name]
    assert channel["address"] == address and "parameters" not in channel
    with pytest.raises(topics.TopicError):
        topics.parse_uplink(address)
    [ref] = channel["messages"].values()
    message = resolve(ref)
    assert message["name"] == message_type.__name__
    schema = DOC["components"]["schemas"][message_type.__name__]
    assert set(schema["properties"]) == {"kind", *message_type.__struct_fields__}
    [operation] = [o for o in DOC["operations"].values() if o["channel"]["$ref"] == f"#/channels/{name}"]
    assert operation["bindings"]["mqtt"]["qos"] == 1 and operation["bindings"]["mqtt"]["retain"] is False
    for example in message["examples"]:
        payload = dict(example["payload"])
        payload["messages"] = [[t, p.encode()] for t, p in payload["messages"]]
        decoded = codec.decode_feed(msgspec.msgpack.encode(payload))
        assert decoded.consumer == payload["consumer"]
        assert [list(m) for m in decoded.messages] == payload["messages"]
        jsonschema.Draft7Validator(schema).validate(example["payload"])
    batch = messages.CommittedBatch(consumer="ingest-1", messages=(("mf/v1/d/up/samples", b"\x00{}"),))
    assert codec.decode_feed(codec.encode_feed(batch)) == batch
    with pytest.raises(ContractError):
        codec.decode_feed(b"\x93not a batch")
