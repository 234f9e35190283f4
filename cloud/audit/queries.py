"""One query over the three audit trails, newest first, as `AuditEntry` rows (SQL built here, pure).

The three tables differ; an entry keeps what they share (kind, id, at, device, who, reason) and the rest
of its row in `detail`, exactly as stored: an override change's `before`, `after`, `weakened` and
`confirmed`; a gate override's `protocol_id` and `version`; a health-data read's `token_id` and `route`.
Nothing is joined in: the audit of health-data reads says who read which device when, never what they
read (the contraindication flags stay in device_profiles, behind the health-data grant).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # psycopg is imported by the readers only: `microfleet audit --help` stays fast
    from psycopg import AsyncConnection, Connection


class Kind(enum.StrEnum):
    OVERRIDES = "overrides"  # alert_override_changes
    GATES = "gates"  # protocol_gate_overrides
    HEALTH_READS = "health-reads"  # health_data_reads


MAX_LIMIT = 10_000

# Per kind: the table, who acted, the reason, and the rest of the row as one JSON object.
_SOURCES: dict[Kind, tuple[str, str, str, str]] = {
    Kind.OVERRIDES: (
        "alert_override_changes",
        "by_whom",
        "reason",
        "jsonb_build_object('before', before, 'after', after, 'weakened', weakened, 'confirmed', confirmed)",
    ),
    Kind.GATES: (
        "protocol_gate_overrides",
        "by_whom",
        "reason",
        "jsonb_build_object('protocol_id', protocol_id, 'version', version)",
    ),
    Kind.HEALTH_READS: (
        "health_data_reads",
        "token_name",
        "''",
        "jsonb_build_object('token_id', token_id, 'route', route)",
    ),
}

_FILTER = (
    "(%(device)s::text is null or device_id = %(device)s) and (%(by)s::text is null or {by} = %(by)s) "
    "and (%(since)s::timestamptz is null or at >= %(since)s) "
    "and (%(until)s::timestamptz is null or at < %(until)s)"
)


@dataclass(frozen=True, slots=True)
class Selection:
    """What to list: every filter given must hold; `kinds` empty means all three."""

    kinds: tuple[Kind, ...] = ()
    device_id: str | None = None
    by: str | None = None  # who acted: by_whom, or the token name of a health-data read
    since: datetime | None = None  # at >= since
    until: datetime | None = None  # at < until
    limit: int = 50

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}, not {self.limit}")
        for at in (self.since, self.until):
            if at is not None and at.tzinfo is None:
                raise ValueError("since/until need a time zone")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    kind: Kind
    id: int  # the row's id in its own table
    at: datetime
    device_id: str
    by: str
    reason: str
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "id": self.id,
            "at": self.at.isoformat(),
            "device_id": self.device_id,
            "by": self.by,
            "reason": self.reason,
            "detail": self.detail,
        }


def query(sel: Selection) -> tuple[bytes, dict[str, Any]]:
    """The SQL and its parameters: each selected table's newest `limit` rows (a top-N each, on its own
    index when a device is given), merged newest first."""
    branches = []
    for kind in sel.kinds or tuple(Kind):
        table, by, reason, detail = _SOURCES[kind]
        branches.append(
            f"(select '{kind.value}'::text as kind, id, at, device_id, {by} as by, {reason} as reason, "
            f"{detail} as detail from {table} where {_FILTER.format(by=by)} "
            "order by at desc, id desc limit %(limit)s)"
        )
    merged = " union all ".join(branches)
    sql = f"select * from ({merged}) trail order by at desc, kind, id desc limit %(limit)s"
    params = {
        "device": sel.device_id,
        "by": sel.by,
        "since": sel.since,
        "until": sel.until,
        "limit": sel.limit,
    }
    return sql.encode(), params


def entry(row: dict[str, Any]) -> AuditEntry:
    return AuditEntry(
        Kind(row["kind"]),
        int(row["id"]),
        row["at"],
        row["device_id"],
        row["by"],
        row["reason"],
        row["detail"],
    )


def list_entries(conn: Connection[Any], sel: Selection) -> list[AuditEntry]:
    from psycopg.rows import dict_row

    sql, params = query(sel)
    return [entry(r) for r in conn.cursor(row_factory=dict_row).execute(sql, params).fetchall()]


async def list_entries_async(conn: AsyncConnection[Any], sel: Selection) -> list[AuditEntry]:
    from psycopg.rows import dict_row

    sql, params = query(sel)
    cur = conn.cursor(row_factory=dict_row)
    return [entry(r) for r in await (await cur.execute(sql, params)).fetchall()]


def summary(e: AuditEntry) -> str:
    """One line of what the entry's detail says, for the CLI's table."""
    d = e.detail
    if e.kind is Kind.GATES:
        return f"sent {d['protocol_id']} v{d['version']} past a blocked safety gate"
    if e.kind is Kind.HEALTH_READS:
        return f"token {d['token_id']}: {d['route']}"
    weakened = ", ".join(f"{w['field']} {w['from']} -> {w['to']}" for w in d["weakened"])
    change = "cleared" if not d["after"] else f"set {_compact(d['after'])}"
    confirmed = "confirmed" if d["confirmed"] else "NOT confirmed"
    return change + (f"; WEAKENED {weakened} ({confirmed})" if weakened else "")


def _compact(overrides: dict[str, Any]) -> str:
    return " ".join(f"{section}.{k}={v}" for section, fields in overrides.items() for k, v in fields.items())
