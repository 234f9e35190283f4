"""Desired vs reported: how far a published protocol version has got across the devices it targets.

Desired: protocol_assignments (one row per device). Reported: devices.protocol_id / protocol_version,
which ingest fills from each Status birth the agent sends after it applies a protocol; and the agent's
DeviceEvent(PROTOCOL_REJECTED, value=version, detail="<id> v<version>: <reason>") for a refusal.

Per device, in this order: converged (it reports the desired version), rejected (it refused that
version; it keeps running its last good one), pending (neither yet; `offline` counts the pending ones
whose last status is offline: they converge when they reconnect, the document is retained).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    Conn = AsyncConnection[Any]


class DeviceProgress(StrEnum):
    CONVERGED = "converged"
    REJECTED = "rejected"
    PENDING = "pending"


def classify(
    desired: tuple[str, int], reported: tuple[str | None, int | None], rejected: bool
) -> DeviceProgress:
    """Pure: the state of one device (the SQL below counts the same way)."""
    if reported == desired:
        return DeviceProgress.CONVERGED
    return DeviceProgress.REJECTED if rejected else DeviceProgress.PENDING


@dataclass(frozen=True, slots=True)
class Progress:
    protocol_id: str
    version: int
    targeted: int
    converged: int
    rejected: int
    pending: int
    offline: int  # of the pending
    rejections: list[tuple[str, str]] = field(default_factory=list)  # (device_id, reason), a sample

    @property
    def done(self) -> bool:
        return self.pending == 0


_PER_DEVICE = """
    select a.device_id,
           coalesce(d.protocol_id = a.protocol_id and d.protocol_version = a.version, false) as converged,
           coalesce(d.state, 'offline') = 'offline' as offline,
           (select e.detail from device_events e
             where e.device_id = a.device_id and e.event = 'protocol_rejected' and e.value = a.version
               and split_part(e.detail, ':', 1) = a.protocol_id || ' v' || a.version
             order by e.at desc limit 1) as rejection
    from protocol_assignments a left join devices d on d.device_id = a.device_id
    where a.protocol_id = %(id)s and a.version = %(version)s
"""
COUNTS = f"""
with t as ({_PER_DEVICE})
select count(*),
       count(*) filter (where converged),
       count(*) filter (where not converged and rejection is not null),
       count(*) filter (where not converged and rejection is null),
       count(*) filter (where not converged and rejection is null and offline)
from t
"""
REJECTIONS = f"""
with t as ({_PER_DEVICE})
select device_id, rejection from t where not converged and rejection is not null
order by device_id limit %(limit)s
"""


async def progress(conn: Conn, protocol_id: str, version: int, *, sample: int = 10) -> Progress:
    params = {"id": protocol_id, "version": version, "limit": sample}
    cur = await conn.execute(COUNTS, params)
    row = await cur.fetchone()
    assert row is not None  # an aggregate always returns one row
    cur = await conn.execute(REJECTIONS, params)
    rejections = [(str(r[0]), str(r[1])) for r in await cur.fetchall()]
    targeted, converged, rejected, pending, offline = (int(v) for v in row)
    return Progress(protocol_id, version, targeted, converged, rejected, pending, offline, rejections)
