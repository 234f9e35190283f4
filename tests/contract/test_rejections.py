"""Table tests: each quarantine Reason is produced by a specific payload or topic, and the checks run in
the documented order (size, topic, JSON, schema, version, kind/device against the topic, ranges)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import pytest

from contract import codec
from contract.errors import ContractError, Reason
from contract.messages import MAX_SAMPLES_PER_BATCH, UplinkMessage
from tests.contract.strategies import NOW

T0 = "2026-06-01T11:55:00Z"
T1 = "2026-06-01T12:00:00Z"
SAMPLE = [T0, 310.5, 6.2, 8400.0, True, "cheek_l", 3]


def status(**changes: Any) -> dict[str, Any]:
    return {"kind": "status", "device_id": "dev-1", "seq": 7, "ts": T1, "state": "online", **changes}


def samples(*rows: list[Any], **changes: Any) -> dict[str, Any]:
    body = {"kind": "samples", "device_id": "dev-1", "seq": 8, "ts": T1, "session_id": "s-1"}
    return {**body, "samples": list(rows) or [SAMPLE], **changes}


def session_end(summary: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    base_summary = {
        "duration_on_s": 300.0,
        "duration_active_s": 290.0,
        "samples": 290,
        "level_start": 3,
        "level_max": 4,
    }
    return {
        "kind": "session_end",
        "device_id": "dev-1",
        "seq": 9,
        "ts": T1,
        "session_id": "s-1",
        "started_at": T0,
        "ended_at": T1,
        "end_reason": "user",
        "summary": {**base_summary, **(summary or {})},
        **changes,
    }


def js(body: object) -> bytes:
    return msgspec.json.encode(body)


def row(**changes: Any) -> list[Any]:
    names = ["t", "current_ua", "voltage_v", "impedance_ohm", "contact", "zone", "level"]
    return [changes.get(n, v) for n, v in zip(names, SAMPLE, strict=True)]


STATUS = "mf/v1/dev-1/up/status"
SAMPLES = "mf/v1/dev-1/up/samples"
SESSION_END = "mf/v1/dev-1/up/session_end"
FUTURE = (NOW + timedelta(hours=1, seconds=1)).isoformat()

# (id, topic, payload, expected reason)
CASES: list[tuple[str, str, bytes, Reason]] = [
    ("oversized", STATUS, js(status()) + b" " * codec.MAX_PAYLOAD_BYTES, Reason.OVERSIZED),
    ("oversized-beats-bad-topic", "nope", b"x" * (codec.MAX_PAYLOAD_BYTES + 1), Reason.OVERSIZED),
    ("not-json-truncated", STATUS, js(status())[:-1], Reason.NOT_JSON),
    ("not-json-binary", STATUS, b"\xff\xfe\x00", Reason.NOT_JSON),
    ("not-json-empty", STATUS, b"", Reason.NOT_JSON),
    ("not-json-trailing", STATUS, js(status()) + b"}", Reason.NOT_JSON),
    ("schema-missing-field", STATUS, js({k: v for k, v in status().items() if k != "state"}), Reason.SCHEMA),
    ("schema-unknown-field", STATUS, js(status(colour="red")), Reason.SCHEMA),
    ("schema-naive-datetime", STATUS, js(status(ts="2026-06-01T12:00:00")), Reason.SCHEMA),
    ("schema-wrong-type", STATUS, js(status(seq="7")), Reason.SCHEMA),
    ("range-negative-seq", STATUS, js(status(seq=-1)), Reason.OUT_OF_RANGE),  # outside declared bounds
    ("schema-bool-version", STATUS, js(status(schema_version=True)), Reason.SCHEMA),
    ("schema-unknown-kind", STATUS, js(status(kind="heartbeat")), Reason.SCHEMA),
    ("schema-not-an-object", STATUS, b"[1, 2]", Reason.SCHEMA),
    ("schema-bad-device-id", STATUS, js(status(device_id="-dev")), Reason.SCHEMA),
    ("schema-device-id-trailing-newline", STATUS, js(status(device_id="dev-1\n")), Reason.SCHEMA),
    ("schema-unknown-state", STATUS, js(status(state="asleep")), Reason.SCHEMA),
    ("schema-no-samples", SAMPLES, js(samples(samples=[])), Reason.SCHEMA),
    ("schema-too-many-samples", SAMPLES, js(samples(*[SAMPLE] * (MAX_SAMPLES_PER_BATCH + 1))), Reason.SCHEMA),
    ("schema-short-sample-row", SAMPLES, js(samples(SAMPLE[:6])), Reason.SCHEMA),
    ("schema-unknown-zone", SAMPLES, js(samples(row(zone="nose"))), Reason.SCHEMA),
    ("schema-float-too-big", SAMPLES, js(samples()).replace(b"310.5", b"1e400"), Reason.SCHEMA),
    ("unknown-version", STATUS, js(status(schema_version=2)), Reason.UNKNOWN_VERSION),
    ("unknown-version-new-fields", STATUS, js(status(schema_version=2, mood="calm")), Reason.UNKNOWN_VERSION),
    ("unknown-version-zero", STATUS, js(status(schema_version=0)), Reason.UNKNOWN_VERSION),
    ("topic-mismatch", "mf/v1/dev-1/up/event", js(status()), Reason.TOPIC_MISMATCH),
    ("topic-mismatch-samples", STATUS, js(samples()), Reason.TOPIC_MISMATCH),
    ("device-mismatch", "mf/v1/dev-2/up/status", js(status()), Reason.DEVICE_MISMATCH),
    ("device-mismatch-case", "mf/v1/DEV-1/up/status", js(status()), Reason.DEVICE_MISMATCH),
    ("out-of-range-current", SAMPLES, js(samples(row(current_ua=5000.5))), Reason.OUT_OF_RANGE),
    ("out-of-range-negative-voltage", SAMPLES, js(samples(row(voltage_v=-0.1))), Reason.OUT_OF_RANGE),
    ("out-of-range-impedance", SAMPLES, js(samples(row(impedance_ohm=5e7 + 1))), Reason.OUT_OF_RANGE),
    ("out-of-range-level", SAMPLES, js(samples(row(level=21))), Reason.OUT_OF_RANGE),
    ("out-of-range-sample-in-future", SAMPLES, js(samples(row(t=FUTURE))), Reason.OUT_OF_RANGE),
    ("out-of-range-ts-in-future", STATUS, js(status(ts=FUTURE)), Reason.OUT_OF_RANGE),
    ("out-of-range-battery", STATUS, js(status(battery_pct=100.5)), Reason.OUT_OF_RANGE),
    (
        "out-of-range-ended-before-start",
        SESSION_END,
        js(session_end(ended_at="2026-06-01T11:00:00Z")),
        Reason.OUT_OF_RANGE,
    ),
    (
        "out-of-range-13h-session",
        SESSION_END,
        js(session_end(started_at="2026-05-31T23:00:00Z")),
        Reason.OUT_OF_RANGE,
    ),
    (
        "out-of-range-contact-ratio",
        SESSION_END,
        js(session_end({"contact_ok_ratio": 1.2})),
        Reason.OUT_OF_RANGE,
    ),
    ("bad-topic-downlink", "mf/v1/dev-1/down/status", js(status()), Reason.BAD_TOPIC),
    ("bad-topic-version", "mf/v2/dev-1/up/status", js(status()), Reason.BAD_TOPIC),
    ("bad-topic-unknown-kind", "mf/v1/dev-1/up/heartbeat", js(status()), Reason.BAD_TOPIC),
    ("bad-topic-device-id", "mf/v1/-dev/up/status", js(status()), Reason.BAD_TOPIC),
    (
        "bad-topic-device-id-trailing-newline",
        "mf/v1/dev-1\n/up/status",
        js(status(device_id="dev-1\n")),
        Reason.BAD_TOPIC,
    ),
    ("bad-topic-extra-level", "mf/v1/dev-1/up/status/x", js(status()), Reason.BAD_TOPIC),
    ("bad-topic-before-json", "mf/v1/dev-1/up", b"not json", Reason.BAD_TOPIC),
]


@pytest.mark.parametrize(("topic", "payload", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rejection_reason(topic: str, payload: bytes, reason: Reason) -> None:
    with pytest.raises(ContractError) as caught:
        codec.decode_uplink(topic, payload, NOW)

    assert caught.value.reason is reason
    assert caught.value.detail  # says what is wrong, for the quarantine row
    assert str(caught.value).startswith(f"{reason.value}: ")


def test_every_reason_the_codec_can_give_has_a_case() -> None:
    # TOO_LATE is decided by ingest (by arrival time), not by the codec.
    assert {c[3] for c in CASES} == set(Reason) - {Reason.TOO_LATE}


@pytest.mark.parametrize(
    ("topic", "body"),
    [(STATUS, status()), (SAMPLES, samples()), (SESSION_END, session_end())],
    ids=["status", "samples", "session_end"],
)
def test_the_base_payloads_of_the_table_are_valid(topic: str, body: dict[str, Any]) -> None:
    """Each rejection above differs from an accepted payload by the one change it names."""
    message: UplinkMessage = codec.decode_uplink(topic, js(body), NOW)
    assert message.device_id == "dev-1"


def test_limits_are_inclusive() -> None:
    edge = samples(row(current_ua=5000.0, voltage_v=0.0, impedance_ohm=5e7, level=20))
    assert codec.decode_uplink(SAMPLES, js(edge), NOW)
    at_skew = status(ts=(NOW + timedelta(hours=1)).isoformat())
    assert codec.decode_uplink(STATUS, js(at_skew), NOW)
    full = samples(*[SAMPLE] * MAX_SAMPLES_PER_BATCH)
    assert codec.decode_uplink(SAMPLES, js(full), NOW)


def test_payload_of_exactly_the_size_limit_is_accepted() -> None:
    body = js(status())
    padded = body + b" " * (codec.MAX_PAYLOAD_BYTES - len(body))
    assert len(padded) == codec.MAX_PAYLOAD_BYTES
    assert codec.decode_uplink(STATUS, padded, NOW)


def test_seq_beyond_bigint_is_rejected() -> None:
    with pytest.raises(ContractError):
        codec.decode_uplink(STATUS, js(status(seq=2**63)), NOW)


def notice(**changes: Any) -> dict[str, Any]:
    body = {"kind": "notice", "device_id": "dev-1", "ts": T1, "notice_id": "n-1", "severity": "info"}
    return {**body, "text": "Take a rest day tomorrow.", **changes}


NOTICE = "mf/v1/dev-1/down/notice"
GATE = "mf/v1/dev-1/down/gate"
DOWNLINK_CASES: list[tuple[str, str, bytes, Reason]] = [
    ("oversized", NOTICE, js(notice()) + b" " * codec.MAX_PAYLOAD_BYTES, Reason.OVERSIZED),
    ("not-json", NOTICE, b"{", Reason.NOT_JSON),
    ("schema-empty-text", NOTICE, js(notice(text="")), Reason.SCHEMA),
    ("schema-unknown-severity", NOTICE, js(notice(severity="panic")), Reason.SCHEMA),
    (
        "unknown-version-new-fields",
        NOTICE,
        js(notice(schema_version=2, colour="red")),
        Reason.UNKNOWN_VERSION,
    ),
    ("notice-on-gate-topic", GATE, js(notice()), Reason.TOPIC_MISMATCH),
    ("protocol-topic-is-not-decoded-here", "mf/v1/dev-1/down/protocol", js(notice()), Reason.TOPIC_MISMATCH),
    ("device-mismatch", "mf/v1/dev-2/down/notice", js(notice()), Reason.DEVICE_MISMATCH),
    ("uplink-topic", "mf/v1/dev-1/up/status", js(notice()), Reason.BAD_TOPIC),
    ("unknown-downlink-kind", "mf/v1/dev-1/down/reboot", js(notice()), Reason.BAD_TOPIC),
]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"), [c[1:] for c in DOWNLINK_CASES], ids=[c[0] for c in DOWNLINK_CASES]
)
def test_downlink_rejection_reason(topic: str, payload: bytes, reason: Reason) -> None:
    with pytest.raises(ContractError) as caught:
        codec.decode_downlink(topic, payload)

    assert caught.value.reason is reason
    assert caught.value.detail


def test_the_base_downlink_payload_is_valid() -> None:
    assert codec.decode_downlink(NOTICE, js(notice())).device_id == "dev-1"


def test_downlink_of_an_unknown_version_is_rejected() -> None:
    with pytest.raises(ContractError) as caught:
        codec.decode_downlink(NOTICE, js(notice(schema_version=2)))
    assert caught.value.reason is Reason.UNKNOWN_VERSION
