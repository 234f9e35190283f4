"""Hypothesis strategies for every uplink and downlink message, within the contract's physical ranges.

Every generated message is valid for `decode_uplink(..., now=NOW)`: timestamps are no later than
NOW + MAX_FUTURE_SKEW, values respect contract.limits, strings respect the declared lengths. Floats are
finite: JSON has no NaN or infinity (see test_codec_properties for what happens to them).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

from contract import limits
from contract.codec import DownlinkMessage
from contract.messages import (
    MAX_SAMPLES_PER_BATCH,
    CommitMark,
    DeviceEvent,
    DeviceState,
    EndReason,
    EventType,
    Notice,
    OtaReport,
    OtaState,
    SafetyGate,
    Sample,
    SampleBatch,
    SessionEnd,
    SessionStart,
    SessionSummary,
    Severity,
    Status,
    SyncRequest,
    UplinkMessage,
    Zone,
    ZoneDwell,
)
from contract.topics import DEVICE_ID_PATTERN

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
INT32 = (-(2**31), 2**31 - 1)
INT64_MAX = 2**63 - 1

device_ids = st.from_regex(DEVICE_ID_PATTERN, fullmatch=True)
session_ids = st.text(min_size=1, max_size=64)
texts = st.text(max_size=200)
seqs = st.integers(0, INT64_MAX)
int32s = st.integers(*INT32)
counts = st.integers(0, INT32[1])  # contract Count: an int column, never negative
finite = st.floats(allow_nan=False, allow_infinity=False)

# Devices send UTC; the contract accepts any aware offset, so some examples carry one (whole minutes:
# RFC 3339 offsets have no seconds).
offsets = st.sampled_from(
    [
        UTC,
        timezone(timedelta(hours=-5)),
        timezone(timedelta(hours=5, minutes=30)),
        timezone(timedelta(hours=14)),
    ]
)


@st.composite
def aware_datetimes(draw: st.DrawFn, earliest: timedelta = timedelta(days=400)) -> datetime:
    """An aware datetime between NOW - earliest and NOW + the allowed clock skew, in some offset."""
    naive = draw(
        st.datetimes(
            min_value=(NOW - earliest).replace(tzinfo=None),
            max_value=(NOW + limits.MAX_FUTURE_SKEW).replace(tzinfo=None),
        )
    )
    return naive.replace(tzinfo=UTC).astimezone(draw(offsets))


def in_range(bounds: tuple[float, float]) -> st.SearchStrategy[float]:
    return st.floats(min_value=bounds[0], max_value=bounds[1], allow_nan=False)


levels = st.integers(int(limits.LEVEL[0]), int(limits.LEVEL[1]))

samples = st.builds(
    Sample,
    t=aware_datetimes(),
    current_ua=in_range(limits.CURRENT_UA),
    voltage_v=in_range(limits.VOLTAGE_V),
    impedance_ohm=in_range(limits.IMPEDANCE_OHM),
    contact=st.booleans(),
    zone=st.none() | st.sampled_from(Zone),
    level=levels,
)


def _uplink_fields() -> dict[str, st.SearchStrategy[object]]:
    return {"device_id": device_ids, "seq": seqs, "ts": aware_datetimes()}


session_starts = st.builds(
    SessionStart,
    **_uplink_fields(),
    session_id=session_ids,
    started_at=aware_datetimes(),
    level=levels,
    tz_offset_min=st.integers(-720, 840),
    protocol_id=texts,
    protocol_version=counts,
    fw_version=texts,
)

sample_batches = st.builds(
    SampleBatch,
    **_uplink_fields(),
    session_id=session_ids,
    samples=st.lists(samples, min_size=1, max_size=min(40, MAX_SAMPLES_PER_BATCH)).map(tuple),
)

summaries = st.builds(
    SessionSummary,
    duration_on_s=finite,
    duration_active_s=in_range((0.0, limits.MAX_SESSION.total_seconds())),
    samples=counts,
    level_start=levels,
    level_max=levels,
    level_changes_up=counts,
    level_changes_down=counts,
    boost_active_s=finite,
    current_ua_mean=in_range(limits.CURRENT_UA),
    current_ua_p95=finite,
    current_ua_max=in_range(limits.CURRENT_UA),
    voltage_v_p95=finite,
    impedance_ohm_median=finite,
    impedance_ohm_p95=finite,
    impedance_ohm_max=finite,
    contact_ok_ratio=in_range((0.0, 1.0)),
    impedance_spikes=counts,
    charging_during_output=st.booleans(),
    battery_pct_start=st.none() | finite,
    battery_pct_end=st.none() | finite,
    zones=st.lists(st.builds(ZoneDwell, zone=st.sampled_from(Zone), dwell_s=finite), max_size=11).map(tuple),
)


@st.composite
def session_ends(draw: st.DrawFn) -> SessionEnd:
    ended_at = draw(aware_datetimes())
    duration = draw(st.timedeltas(min_value=timedelta(0), max_value=limits.MAX_SESSION))
    return SessionEnd(
        device_id=draw(device_ids),
        seq=draw(seqs),
        ts=draw(aware_datetimes()),
        session_id=draw(session_ids),
        started_at=ended_at - duration,
        ended_at=ended_at,
        end_reason=draw(st.sampled_from(EndReason)),
        summary=draw(summaries),
    )


device_events = st.builds(
    DeviceEvent,
    **_uplink_fields(),
    event=st.sampled_from(EventType),
    at=aware_datetimes(),
    session_id=st.none() | session_ids,
    level_from=st.none() | levels,
    level_to=st.none() | levels,
    value=st.none() | st.floats(-1e12, 1e12),
    detail=texts,
)

statuses = st.builds(
    Status,
    **_uplink_fields(),
    state=st.sampled_from(DeviceState),
    model=texts,
    hw_rev=texts,
    fw_version=texts,
    protocol_id=texts,
    protocol_version=counts,
    outbox_depth=counts,
    outbox_dropped=counts,
    battery_pct=st.none() | in_range((0.0, 100.0)),
)

ota_reports = st.builds(
    OtaReport,
    **_uplink_fields(),
    job_id=st.text(min_size=1, max_size=100),
    state=st.sampled_from(OtaState),
    rollout_id=st.integers(0, INT64_MAX),
    fw_version=texts,
    target_version=texts,
    progress=st.none() | st.floats(0.0, 1.0),
    reason=texts,
    retryable=st.booleans(),
)

STRATEGIES: dict[type[UplinkMessage], st.SearchStrategy[UplinkMessage]] = {
    SessionStart: session_starts,
    SampleBatch: sample_batches,
    SessionEnd: session_ends(),
    DeviceEvent: device_events,
    Status: statuses,
    OtaReport: ota_reports,
}

uplink_messages: st.SearchStrategy[UplinkMessage] = st.one_of(*STRATEGIES.values())


notices = st.builds(
    Notice,
    device_id=device_ids,
    ts=aware_datetimes(),
    notice_id=st.text(min_size=1, max_size=100),
    severity=st.sampled_from(Severity),
    text=st.text(min_size=1, max_size=500),
    rule_id=texts,
    expires_at=st.none() | aware_datetimes(),
)

safety_gates = st.builds(
    SafetyGate,
    device_id=device_ids,
    ts=aware_datetimes(),
    blocked=st.booleans(),
    reasons=st.lists(texts, max_size=4).map(tuple),
    text=st.text(max_size=500),
)

commit_marks = st.builds(
    CommitMark,
    device_id=device_ids,
    ts=aware_datetimes(),
    through=st.integers(min_value=-1, max_value=2**63 - 1),
)


@st.composite
def sync_requests(draw: st.DrawFn) -> SyncRequest:
    next_seq = draw(st.integers(min_value=0, max_value=2**63 - 1))
    floor = draw(st.integers(min_value=0, max_value=next_seq))
    return SyncRequest(device_id=draw(device_ids), ts=draw(aware_datetimes()), floor=floor, next_seq=next_seq)


DOWNLINK_STRATEGIES: dict[type[DownlinkMessage], st.SearchStrategy[DownlinkMessage]] = {
    Notice: notices,
    SafetyGate: safety_gates,
    CommitMark: commit_marks,
}

downlink_messages: st.SearchStrategy[DownlinkMessage] = st.one_of(*DOWNLINK_STRATEGIES.values())
