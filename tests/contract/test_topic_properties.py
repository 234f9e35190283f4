"""Property tests for topics: build and parse are inverses, and no string makes `parse_uplink` fail with
anything but TopicError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract import topics
from contract.errors import ContractError, Reason, TopicError
from contract.topics import Uplink
from tests.contract.strategies import device_ids

kinds = st.sampled_from(Uplink)
# Topic-like strings: our prefix, a level that may or may not be a device id, and a kind that may be wrong.
levels = st.text(max_size=70) | device_ids
topic_like = st.builds(
    lambda p, d, u, k: f"{p}/{d}/{u}/{k}",
    st.sampled_from(["mf/v1", "mf/v2", "mf", "", "$share/ingest/mf/v1"]),
    levels,
    st.sampled_from(["up", "down", "UP", ""]),
    st.sampled_from([k.value for k in Uplink] + [k.value for k in topics.Downlink]) | st.text(max_size=15),
)


@given(device_id=device_ids, kind=kinds)
def test_build_then_parse_gives_back_device_and_kind(device_id: str, kind: Uplink) -> None:
    topic = topics.uplink(device_id, kind)

    assert topics.parse_uplink(topic) == topics.ParsedTopic(device_id, kind)
    assert topic == f"mf/v1/{device_id}/up/{kind.value}"


@given(device_id=device_ids, kind=st.sampled_from(topics.Downlink))
def test_downlink_build_then_parse(device_id: str, kind: topics.Downlink) -> None:
    topic = topics.downlink(device_id, kind)

    assert topics.parse_downlink(topic) == (device_id, kind)
    assert mqtt_match(topics.downlink_filter(device_id), topic)
    with pytest.raises(TopicError):
        topics.parse_uplink(topic)


@settings(max_examples=200)
@given(topic=st.text(max_size=120) | topic_like)
def test_parse_downlink_never_fails_with_anything_but_topic_error(topic: str) -> None:
    try:
        device_id, kind = topics.parse_downlink(topic)
    except TopicError:
        return
    assert topics.downlink(device_id, kind) == topic


def mqtt_match(topic_filter: str, topic: str) -> bool:
    """MQTT topic matching (`+` one level, `#` the rest), enough for our filters."""
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels) or f not in ("+", t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


@given(device_id=device_ids, kind=kinds, other=kinds)
def test_every_built_topic_matches_the_ingest_filters(device_id: str, kind: Uplink, other: Uplink) -> None:
    topic = topics.uplink(device_id, kind)

    assert mqtt_match(topics.uplink_filter(), topic)
    assert mqtt_match(topics.uplink_filter(kind), topic)
    assert mqtt_match(topics.uplink_filter(other), topic) is (other is kind)


@settings(max_examples=400)
@given(topic=st.text(max_size=120) | topic_like)
def test_parse_never_fails_with_anything_but_topic_error(topic: str) -> None:
    try:
        parsed = topics.parse_uplink(topic)
    except TopicError as exc:
        assert exc.reason is Reason.BAD_TOPIC
        assert isinstance(exc, ContractError)
        return
    # Accepted: then building it again gives the very same string.
    assert topics.uplink(parsed.device_id, parsed.kind) == topic


@given(device_id=st.text(max_size=80))
def test_building_with_an_invalid_device_id_raises_topic_error(device_id: str) -> None:
    if topics.is_valid_device_id(device_id):
        assert topics.uplink(device_id, Uplink.STATUS).startswith("mf/v1/")
    else:
        with pytest.raises(TopicError):
            topics.uplink(device_id, Uplink.STATUS)


@pytest.mark.parametrize(
    "device_id",
    ["a", "A" * 64, "0-dev_1.x", "NF-MINI-000123"],
)
def test_device_id_edges_accepted(device_id: str) -> None:
    assert topics.is_valid_device_id(device_id)


@pytest.mark.parametrize(
    "device_id",
    ["", "A" * 65, "-dev", "_dev", ".dev", "dev/1", "dev+", "dev#", "dév", "dev 1"],
)
def test_device_id_edges_rejected(device_id: str) -> None:
    assert not topics.is_valid_device_id(device_id)
    with pytest.raises(TopicError):
        topics.parse_uplink(f"mf/v1/{device_id}/up/status")


@pytest.mark.parametrize("device_id", ["dev\n", "A" * 64 + "\n"])
def test_device_id_with_trailing_newline_rejected(device_id: str) -> None:
    """Regression: `$` matched before a trailing newline, so 'dev\\n' was a valid id (fixed with \\Z)."""
    assert not topics.is_valid_device_id(device_id)
    with pytest.raises(TopicError):
        topics.parse_uplink(f"mf/v1/{device_id}/up/status")


def test_shared_subscription_of_the_ingest_group() -> None:
    assert topics.shared("ingest", topics.uplink_filter()) == "$share/ingest/mf/v1/+/up/#"


@given(group=st.text(max_size=20))
def test_shared_group_must_be_a_single_level(group: str) -> None:
    if group and not any(c in group for c in "/+#"):
        assert topics.shared(group, "mf/v1/+/up/#") == f"$share/{group}/mf/v1/+/up/#"
    else:
        with pytest.raises(TopicError):
            topics.shared(group, "mf/v1/+/up/#")
