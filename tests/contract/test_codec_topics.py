"""The codec's table of parsed uplink topics: the same answer as parsing, errors every time, bounded."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contract import codec
from contract.errors import ContractError, Reason
from contract.messages import DeviceState, Status
from contract.topics import Uplink, parse_uplink, uplink

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_a_topic_parses_the_same_from_the_table_and_bad_topics_are_refused_every_time() -> None:
    status = Status(device_id="dev-a", seq=1, ts=NOW, state=DeviceState.ONLINE)
    topic, payload = uplink("dev-a", Uplink.STATUS), codec.encode(status)
    for _ in range(3):
        assert codec.decode_uplink(topic, payload, NOW) == status
        assert codec._topics[topic] == parse_uplink(topic)
    for bad in ("mf/v1/dev a/up/status", "mf/v1/dev-a/up/nonsense", "mf/v2/dev-a/up/status"):
        for _ in range(2):
            with pytest.raises(ContractError) as err:
                codec.decode_uplink(bad, payload, NOW)
            assert err.value.reason is Reason.BAD_TOPIC
            assert bad not in codec._topics
    # another device's topic with this body: the table does not mix devices up
    with pytest.raises(ContractError) as err:
        codec.decode_uplink(uplink("dev-b", Uplink.STATUS), payload, NOW)
    assert err.value.reason is Reason.DEVICE_MISMATCH


def test_the_table_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_TOPIC_CACHE_MAX", 10)
    monkeypatch.setattr(codec, "_topics", {})
    for i in range(35):
        codec._parsed_uplink(uplink(f"dev-{i}", Uplink.SAMPLES))
        assert len(codec._topics) <= 10
