"""Pure conversion of decoded uplink messages into table rows (tuples in the column order of `tables.py`).

Natural keys (docs/data-model.md) are computed here too, so the batcher can keep one row per key.
Nothing here does I/O; every function is a plain mapping from a frozen message to tuples.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import msgspec

from contract.errors import Reason
from contract.messages import (
    DeviceEvent,
    DeviceState,
    OtaReport,
    SampleBatch,
    SessionEnd,
    SessionStart,
    Status,
    UplinkMessage,
)
from contract.topics import is_valid_device_id

Row = tuple[Any, ...]
Receipt = tuple[str, int]  # (device_id, seq) of a message ingest committed (stored or quarantined)

SESSION_START_FIELDS = ("level_start", "tz_offset_min", "protocol_id", "protocol_version", "fw_version")
SESSION_END_FIELDS = (
    "ended_at",
    "end_reason",
    "level_max",
    "duration_on_s",
    "duration_active_s",
    "samples",
    "level_changes_up",
    "level_changes_down",
    "boost_active_s",
    "current_ua_mean",
    "current_ua_p95",
    "current_ua_max",
    "voltage_v_p95",
    "impedance_ohm_median",
    "impedance_ohm_p95",
    "impedance_ohm_max",
    "contact_ok_ratio",
    "impedance_spikes",
    "charging_during_output",
    "battery_pct_start",
    "battery_pct_end",
    "zones",
)
SESSION_KEY = ("device_id", "session_id", "started_at")
SESSION_COLUMNS = SESSION_KEY + SESSION_START_FIELDS + SESSION_END_FIELDS
_N_START = len(SESSION_START_FIELDS)
_N_END = len(SESSION_END_FIELDS)

STATUS_FIELDS = (
    "state",
    "model",
    "hw_rev",
    "fw_version",
    "protocol_id",
    "protocol_version",
    "outbox_depth",
    "outbox_dropped",
    "battery_pct",
)
_N_STATUS = len(STATUS_FIELDS)
# devices stage row: device_id, last_seen, last_seq, tz_offset_min, status_at, *STATUS_FIELDS
DEVICE_COLUMNS = ("device_id", "last_seen", "last_seq", "tz_offset_min", "status_at", *STATUS_FIELDS)


def sample_rows(m: SampleBatch) -> list[Row]:
    d, sid = m.device_id, m.session_id
    return [
        (d, s.t, sid, s.current_ua, s.voltage_v, s.impedance_ohm, s.contact, s.zone, s.level)
        for s in m.samples
    ]


def event_row(m: DeviceEvent) -> Row:
    return (
        m.device_id,
        m.seq,
        m.at,
        m.event.value,
        m.session_id,
        m.level_from,
        m.level_to,
        m.value,
        m.detail,
    )


def uplink_log_row(m: UplinkMessage, kind: str, consumer: str) -> Row:
    return (m.device_id, m.seq, kind, m.ts, consumer)


def session_start_row(m: SessionStart) -> Row:
    start = (m.level, m.tz_offset_min, m.protocol_id, m.protocol_version, m.fw_version)
    return (m.device_id, m.session_id, m.started_at, *start, *((None,) * _N_END))


def session_end_row(m: SessionEnd) -> Row:
    s = m.summary
    zones = msgspec.to_builtins(s.zones)  # a list: the jsonb dumper serialises it
    end = (
        m.ended_at,
        m.end_reason.value,
        s.level_max,
        s.duration_on_s,
        s.duration_active_s,
        s.samples,
        s.level_changes_up,
        s.level_changes_down,
        s.boost_active_s,
        s.current_ua_mean,
        s.current_ua_p95,
        s.current_ua_max,
        s.voltage_v_p95,
        s.impedance_ohm_median,
        s.impedance_ohm_p95,
        s.impedance_ohm_max,
        s.contact_ok_ratio,
        s.impedance_spikes,
        s.charging_during_output,
        s.battery_pct_start,
        s.battery_pct_end,
        zones,
    )
    # level_start is known from the summary too: an end that arrives first still fills it.
    return (m.device_id, m.session_id, m.started_at, s.level_start, *((None,) * (_N_START - 1)), *end)


def merge_session(old: Row, new: Row) -> Row:
    """Column-wise merge: a non-null new value wins. Start and end in either order, or twice, give one row."""
    return tuple(n if n is not None else o for o, n in zip(old, new, strict=True))


def status_rank(m: Status) -> tuple[datetime, int]:
    """Order of status messages: later `ts` wins; at equal `ts` the will (offline) wins over the birth,
    because a will carries the seq and time of the connect it belongs to."""
    return (m.ts, 1 if m.state is DeviceState.OFFLINE else 0)


def status_fields(m: Status) -> Row:
    return (
        m.state.value,
        m.model,
        m.hw_rev,
        m.fw_version,
        m.protocol_id,
        m.protocol_version,
        m.outbox_depth,
        m.outbox_dropped,
        m.battery_pct,
    )


def device_row(m: UplinkMessage) -> Row:
    tz = m.tz_offset_min if isinstance(m, SessionStart) else None
    if isinstance(m, Status):
        return (m.device_id, m.ts, m.seq, tz, m.ts, *status_fields(m))
    return (m.device_id, m.ts, m.seq, tz, None, *((None,) * _N_STATUS))


def merge_device(
    old: Row, new: Row, old_rank: tuple[datetime, int] | None, new_rank: tuple[datetime, int] | None
) -> Row:
    last_seen = max(old[1], new[1])
    last_seq = max(old[2], new[2])
    tz = new[3] if new[3] is not None else old[3]
    status = new[4:] if new_rank is not None and (old_rank is None or new_rank >= old_rank) else old[4:]
    return (old[0], last_seen, last_seq, tz, *status)


def oldest_time(m: UplinkMessage) -> datetime:
    """The oldest time column the message would write (each decides a partition / compressed chunk)."""
    times = [m.ts]
    if isinstance(m, SampleBatch):
        times.extend(s.t for s in m.samples)
    elif isinstance(m, SessionStart | SessionEnd):
        times.append(m.started_at)
    elif isinstance(m, DeviceEvent):
        times.append(m.at)
    return min(times)


def sha256(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


# OTA reports (cloud/ota): one append row per report; `ota_device_jobs` keeps the latest state per job.
OTA_REPORT_COLUMNS = (
    "device_id",
    "seq",
    "ts",
    "job_id",
    "rollout_id",
    "state",
    "fw_version",
    "target_version",
    "progress",
    "reason",
    "retryable",
)


def ota_report_row(m: OtaReport) -> Row:
    return (
        m.device_id,
        m.seq,
        m.ts,
        m.job_id,
        m.rollout_id,
        m.state.value,
        m.fw_version,
        m.target_version,
        m.progress,
        m.reason,
        m.retryable,
    )


# -- quarantine ------------------------------------------------------------------------------------------
# Everything written into quarantine comes from a device or from an error about its bytes, so it is made
# storable first: PostgreSQL text holds no NUL and UTF-8 holds no lone surrogate (msgspec and paho can hand
# either over), and a huge topic or error text must not make the row itself fail.
MAX_TOPIC_CHARS = 512
MAX_DETAIL_CHARS = 2000


def clean_text(text: str, limit: int) -> str:
    """`text` as PostgreSQL `text` accepts it: NUL escaped as \\x00, invalid surrogates as \\udXXX, and at
    most `limit` characters (cut with an ellipsis)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text


def ascii_text(text: str, limit: int) -> str:
    """The last resort: only printable ASCII (everything else escaped), so no encoding can refuse it."""
    out = text.encode("ascii", "backslashreplace").decode("ascii")
    out = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in out)
    return out[:limit]


def quarantine_row(topic: str, payload: bytes, reason: Reason, detail: str, consumer: str) -> Row:
    """A quarantine row (columns of tables.QUARANTINE) with every text cleaned."""
    return (
        clean_text(topic, MAX_TOPIC_CHARS),
        payload,
        sha256(payload),
        reason.value,
        clean_text(detail, MAX_DETAIL_CHARS),
        clean_text(consumer, 200),
    )


class _SeqProbe(msgspec.Struct):
    seq: int  # every other field ignored: a lenient look at a message that failed its strict decode


_seq_probe = msgspec.json.Decoder(_SeqProbe)
_UP = "mf/v1/"


def lenient_receipt(topic: str, payload: bytes) -> Receipt | None:
    """(device_id, seq) of a message that will be quarantined, if both can be read: the device from an
    uplink topic (not `sync`: a sync request has no seq), the seq as a top-level integer field. None if not."""
    if not topic.startswith(_UP):
        return None
    parts = topic.split("/")
    if len(parts) != 5 or parts[3] != "up" or parts[4] == "sync" or not is_valid_device_id(parts[2]):
        return None
    try:
        seq = _seq_probe.decode(payload).seq
    except Exception:  # noqa: BLE001 - any failure of a lenient parse only means "no receipt"
        return None
    if not 0 <= seq < 2**63:
        return None
    return (parts[2], seq)
