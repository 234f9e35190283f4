"""The SQL of the ingest writer: per table, its columns, COPY types, staging table and merge statement.

Column orders match the tuples built by `rows.py`. Staging tables are TEMP ... ON COMMIT DELETE ROWS,
created once per connection; their types are ours, so the real tables may add columns with defaults.
The upserts take their rows in key order, like the commit marks (marks.py): two ingest processes lock
the rows they share in the same order and do not deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from cloud.ingest.rows import DEVICE_COLUMNS, OTA_REPORT_COLUMNS, SESSION_COLUMNS, SESSION_KEY, Row


@dataclass(frozen=True, slots=True)
class Table:
    name: str  # the real table
    columns: tuple[str, ...]
    types: tuple[str, ...]
    merge: str  # INSERT INTO <name> SELECT ... FROM <stage> ...

    @property
    def stage(self) -> str:
        return f"mf_stage_{self.name}"

    @property
    def create_stage(self) -> str:
        cols = ", ".join(f"{c} {t}" for c, t in zip(self.columns, self.types, strict=True))
        return f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} ({cols}) ON COMMIT DELETE ROWS"

    def copy_into(self, target: str) -> str:
        return f"COPY {target} ({', '.join(self.columns)}) FROM STDIN (FORMAT BINARY)"


def _append(name: str, columns: tuple[str, ...], types: tuple[str, ...]) -> Table:
    cols = ", ".join(columns)
    merge = f"INSERT INTO {name} ({cols}) SELECT {cols} FROM mf_stage_{name} ON CONFLICT DO NOTHING"
    return Table(name, columns, types, merge)


SAMPLES = _append(
    "samples",
    ("device_id", "ts", "session_id", "current_ua", "voltage_v", "impedance_ohm", "contact", "zone", "level"),
    ("text", "timestamptz", "text", "float4", "float4", "float4", "bool", "text", "int2"),
)
EVENTS = _append(
    "device_events",
    ("device_id", "seq", "at", "event", "session_id", "level_from", "level_to", "value", "detail"),
    ("text", "int8", "timestamptz", "text", "text", "int2", "int2", "float8", "text"),
)
UPLINK_LOG = _append(
    "uplink_log",
    ("device_id", "seq", "kind", "sent_at", "consumer"),
    ("text", "int8", "text", "timestamptz", "text"),
)

_SESSION_TYPES = (
    ("text", "text", "timestamptz")  # key
    + ("int2", "int4", "text", "int4", "text")  # start fields
    + ("timestamptz", "text", "int2", "float4", "float4", "int4", "int4", "int4", "float4")
    + ("float4",) * 8
    + ("int4", "bool", "float4", "float4", "jsonb")
)
_session_cols = ", ".join(SESSION_COLUMNS)
_session_set = ", ".join(
    f"{c} = COALESCE(EXCLUDED.{c}, s.{c})" for c in SESSION_COLUMNS if c not in SESSION_KEY
)
SESSIONS = Table(
    "sessions",
    SESSION_COLUMNS,
    _SESSION_TYPES,
    # start and end merge column-wise, in either order and any number of times
    f"INSERT INTO sessions AS s ({_session_cols}) SELECT {_session_cols} FROM mf_stage_sessions "
    "ORDER BY device_id, session_id, started_at "
    f"ON CONFLICT (device_id, session_id, started_at) DO UPDATE SET {_session_set}",
)

_STATUS = ("state", "model", "hw_rev", "fw_version", "protocol_id", "protocol_version", "outbox_depth")
_STATUS_ALL = (*_STATUS, "outbox_dropped", "battery_pct")
_newer = "(EXCLUDED.updated_at IS NOT NULL AND (d.updated_at IS NULL OR EXCLUDED.updated_at >= d.updated_at))"
_status_set = ", ".join(f"{c} = CASE WHEN {_newer} THEN EXCLUDED.{c} ELSE d.{c} END" for c in _STATUS_ALL)
DEVICES = Table(
    "devices",
    DEVICE_COLUMNS,
    ("text", "timestamptz", "int8", "int4", "timestamptz", *("text",) * 5, "int4", "int4", "int4", "float4"),
    # devices.updated_at holds the `ts` of the status message the status columns come from: an older
    # status (a redelivery, or a slower consumer) never overwrites a newer one.
    "INSERT INTO devices AS d (device_id, last_seen, last_seq, tz_offset_min, updated_at, "
    f"{', '.join(_STATUS_ALL)}) SELECT device_id, last_seen, last_seq, tz_offset_min, status_at, "
    f"{', '.join(_STATUS_ALL)} FROM mf_stage_devices ORDER BY device_id ON CONFLICT (device_id) DO UPDATE SET "
    "last_seen = GREATEST(d.last_seen, EXCLUDED.last_seen), last_seq = GREATEST(d.last_seq, EXCLUDED.last_seq), "
    "tz_offset_min = COALESCE(EXCLUDED.tz_offset_min, d.tz_offset_min), "
    f"{_status_set}, updated_at = CASE WHEN {_newer} THEN EXCLUDED.updated_at ELSE d.updated_at END",
)
_q_cols = "topic, payload, payload_sha256, reason, detail, consumer"
QUARANTINE = Table(
    "quarantine",
    ("topic", "payload", "payload_sha256", "reason", "detail", "consumer"),
    ("text", "bytea", "bytea", "text", "text", "text"),
    f"INSERT INTO quarantine ({_q_cols}) SELECT {_q_cols} FROM mf_stage_quarantine "
    "ON CONFLICT (topic, payload_sha256) DO NOTHING",
)

# OTA reports (migration 0500_ota.sql), written by ingest like every uplink (ack after commit, so none is
# lost); OTA_JOB_MERGE then moves each job to the state of its newest report. A cancelled job
# (by the device, or by force) stays cancelled: later reports are kept in ota_reports but do not change it.
OTA_REPORTS = _append(
    "ota_reports",
    OTA_REPORT_COLUMNS,
    ("text", "int8", "timestamptz", "text", "int8", "text", "text", "text", "float4", "text", "bool"),
)
OTA_JOB_MERGE = (
    "UPDATE ota_device_jobs AS j SET state = r.state, reason = NULLIF(r.reason, ''), retryable = r.retryable, "
    "progress = COALESCE(r.progress, j.progress), fw_version = r.fw_version, report_ts = r.ts, "
    "report_seq = r.seq, updated_at = now() "
    "FROM (SELECT DISTINCT ON (job_id, device_id) * FROM mf_stage_ota_reports "
    "ORDER BY job_id, device_id, ts DESC, seq DESC) AS r "
    "WHERE j.job_id = r.job_id AND j.device_id = r.device_id "
    "AND j.state <> 'cancelled' "
    "AND (j.report_ts IS NULL OR (r.ts, r.seq) >= (j.report_ts, j.report_seq))"
)

APPEND_TABLES = (SAMPLES, EVENTS, UPLINK_LOG)
ALL_TABLES = (SAMPLES, EVENTS, UPLINK_LOG, SESSIONS, DEVICES, QUARANTINE, OTA_REPORTS)

# Binary COPY does not check ranges: psycopg packs an int2/int4 modulo 2^16/2^32 (70000 -> 4464) and a
# float4 beyond 3.4e38 as infinity, and raises a bare OverflowError for int8. So every value is checked
# against its column type before it reaches COPY (the contract bounds some fields only).
_INT_BOUNDS = {"int2": 2**15, "int4": 2**31, "int8": 2**63}
_FLOAT4_MAX = 3.4028234663852886e38


@cache
def _bounded_columns(table: Table) -> tuple[tuple[int, str, str, int | None], ...]:
    """(index, column, type, int bound or None for float4) of the columns whose type can overflow."""
    return tuple(
        (i, column, type_, _INT_BOUNDS.get(type_))
        for i, (column, type_) in enumerate(zip(table.columns, table.types, strict=True))
        if type_ in _INT_BOUNDS or type_ == "float4"
    )


def misfit(table: Table, row: Row) -> str | None:
    """Why `row` does not fit the column types of `table` (None when it fits). Runs for every row ingest
    writes, so it only visits the columns that can overflow (a sample row: 4 of its 9)."""
    if len(row) != len(table.columns):
        raise ValueError(f"{table.name}: a row of {len(row)} values for {len(table.columns)} columns")
    for i, column, type_, bound in _bounded_columns(table):
        value = row[i]
        if value is None or isinstance(value, bool):
            continue
        if bound is not None:
            if isinstance(value, int) and not -bound <= value < bound:
                return f"{column}={value} does not fit the database column type {type_}"
        elif isinstance(value, float) and not abs(value) <= _FLOAT4_MAX:
            return f"{column}={value} does not fit the database column type real"
    return None
