from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contract.codec import decode_uplink, encode
from contract.messages import DeviceEvent, EndReason, EventType, SampleBatch, SessionEnd, SessionStart, Zone
from contract.topics import uplink
from edge.sensor import Reading
from edge.session import SessionError, SessionRecorder, number

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def reading(i: int, current: float = 200.0, impedance: float = 5000.0, contact: bool = True) -> Reading:
    return Reading(
        T0 + timedelta(seconds=i), current, current * 1e-6 * impedance, impedance, contact, Zone.CHEEK_L
    )


def test_a_session_becomes_start_batches_events_and_end_with_its_summary() -> None:
    rec = SessionRecorder("dev-1", samples_per_batch=10, tz_offset_min=60, fw_version="1.2.3")
    out = rec.start("s1", T0, 3)
    assert isinstance(out[0], SessionStart) and out[0].level == 3 and out[0].tz_offset_min == 60
    batches = []
    for i in range(25):
        if i == 12:
            [ev] = rec.change_level(T0 + timedelta(seconds=i), 4)
            assert isinstance(ev, DeviceEvent) and ev.event is EventType.LEVEL_CHANGE
            assert (ev.level_from, ev.level_to, ev.session_id) == (3, 4, "s1")
        batches += rec.record(reading(i, impedance=20_000.0 if i == 5 else 5000.0))
    assert [len(b.samples) for b in batches if isinstance(b, SampleBatch)] == [10, 10]
    assert batches[1].samples[5].level == 4  # type: ignore[union-attr]
    tail = rec.end(T0 + timedelta(seconds=25), EndReason.AUTO_TIMER)
    assert isinstance(tail[0], SampleBatch) and len(tail[0].samples) == 5
    end = tail[1]
    assert isinstance(end, SessionEnd) and end.end_reason is EndReason.AUTO_TIMER
    s = end.summary
    assert (s.samples, s.duration_on_s, s.duration_active_s) == (25, 25.0, 25.0)
    assert (s.level_start, s.level_max, s.level_changes_up, s.level_changes_down) == (3, 4, 1, 0)
    assert s.impedance_spikes == 2  # 5k -> 20k and back
    assert s.zones[0].zone is Zone.CHEEK_L and s.zones[0].dwell_s == 25
    # every message, numbered, passes the wire contract
    for seq, m in enumerate(out + batches + tail):
        numbered = number(m, seq)
        decoded = decode_uplink(uplink("dev-1", _kind(numbered)), encode(numbered), T0 + timedelta(hours=1))
        assert decoded.seq == seq


def _kind(m: object):  # type: ignore[no-untyped-def]
    from contract.messages import kind_of

    return kind_of(m)  # type: ignore[arg-type]


def test_no_contact_samples_are_counted_but_not_in_the_current_figures() -> None:
    rec = SessionRecorder("dev-1", samples_per_batch=600)
    rec.start("s1", T0, 2)
    for i in range(10):
        rec.record(
            reading(i, current=0.0 if i % 2 else 160.0, impedance=2e6 if i % 2 else 6000, contact=not i % 2)
        )
    end = rec.end(T0 + timedelta(seconds=10), EndReason.USER)[-1]
    assert isinstance(end, SessionEnd)
    assert end.summary.contact_ok_ratio == 0.5
    assert end.summary.current_ua_mean == 160.0
    assert end.summary.impedance_ohm_max == 6000


def test_wrong_order_is_a_clear_error() -> None:
    rec = SessionRecorder("dev-1")
    with pytest.raises(SessionError, match="start"):
        rec.record(reading(0))
    rec.start("s1", T0, 1)
    with pytest.raises(SessionError, match="still running"):
        rec.start("s2", T0, 1)
    assert rec.change_level(T0, 1) == []
