"""Protocols that break a model's hard limits are refused, naming the field and the limit."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from contract.messages import Zone
from contract.protocol import (
    MODEL_LIMITS,
    ProtocolRejected,
    TreatmentProtocol,
    ZoneLimit,
    check,
    starter_protocol,
    violations,
)

NOW = datetime(2026, 11, 26, tzinfo=UTC)


def test_starter_protocol_is_safe_on_its_model() -> None:
    p = starter_protocol(NOW)
    assert violations(p, MODEL_LIMITS["mf-home-1"]) == []
    check(p, "mf-home-1")
    assert p.current_for_level(1) == 80.0 and p.current_for_level(9) == 400.0


@pytest.mark.parametrize(
    ("change", "field", "limit"),
    [
        ({"level_current_ua": (80.0, 450.0)}, "level_current_ua[2]", 400),
        ({"zones": (ZoneLimit(Zone.ORBITAL, 50.0, 10.0),)}, "zones[orbital].max_current_ua", 0),
        ({"zones": (ZoneLimit(Zone.UNDER_EYE_L, 300.0, 10.0),)}, "zones[under_eye_l].max_current_ua", 192),
        ({"zones": (ZoneLimit(Zone.CHEEK_L, 401.0, 10.0),)}, "zones[cheek_l].max_current_ua", 400),
        ({"session_max_s": 1500}, "session_max_s", 1200),
        ({"default_level": 7}, "default_level", 5),
        ({"models": ("mf-pro-1",)}, "models", "mf-home-1"),
    ],
)
def test_each_hard_limit_is_named(change: dict[str, object], field: str, limit: object) -> None:
    p = msgspec.structs.replace(starter_protocol(NOW), **change)
    with pytest.raises(ProtocolRejected) as info:
        check(p, "mf-home-1")
    assert [(v.field, v.limit) for v in info.value.violations] == [(field, limit)]
    assert field in str(info.value)


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ProtocolRejected, match="unknown model"):
        check(starter_protocol(NOW), "no-such-model")


def test_protocol_decoding_is_strict() -> None:
    raw = msgspec.json.encode(starter_protocol(NOW))
    assert msgspec.json.decode(raw, type=TreatmentProtocol) == starter_protocol(NOW)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw.replace(b'"version":1', b'"version":0'), type=TreatmentProtocol)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw[:-1] + b',"extra":1}', type=TreatmentProtocol)


def test_downlink_notice_and_gate_round_trip_and_checks() -> None:
    from contract.codec import ContractError, decode_downlink, encode
    from contract.messages import Notice, SafetyGate, Severity
    from contract.topics import Downlink, downlink

    notice = Notice(
        device_id="d1", ts=NOW, notice_id="n1", severity=Severity.WARNING, text="Take a rest day tomorrow."
    )
    gate = SafetyGate(
        device_id="d1", ts=NOW, blocked=True, reasons=("pregnancy",), text="Sessions are paused."
    )
    assert decode_downlink(downlink("d1", Downlink.NOTICE), encode(notice)) == notice
    assert decode_downlink(downlink("d1", Downlink.GATE), encode(gate)) == gate
    with pytest.raises(ContractError, match="device_mismatch"):
        decode_downlink(downlink("d2", Downlink.NOTICE), encode(notice))
    with pytest.raises(ContractError, match="topic_mismatch"):
        decode_downlink(downlink("d1", Downlink.GATE), encode(notice))
