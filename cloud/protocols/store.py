"""Protocols in PostgreSQL (migration 0400_protocols.sql): published versions, and the desired protocol of
each device. Async psycopg 3 (the API's pool; the CLI opens one connection).

A version is immutable: publishing the same (protocol_id, version) again is allowed only with the same
document (a re-publish, e.g. after a broker outage); a different document needs a new version. "The same"
is compared as protocols (the stored JSON decoded back), not as JSON trees: a stored array reads back as
a list where the struct has a tuple, and a file may spell 80 for 80.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from contract.protocol import TreatmentProtocol
from contract.signing import SignedDocument

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    Conn = AsyncConnection[Any]


class VersionConflict(ValueError):
    """The version exists with another document."""


@dataclass(frozen=True, slots=True)
class Target:
    device_id: str
    model: str | None  # None: the device has not reported yet
    selector: str  # how it was chosen: model=..., tag=..., device


@dataclass(frozen=True, slots=True)
class Published:
    protocol: TreatmentProtocol
    signed: SignedDocument
    key_id: str
    published_at: datetime
    published_by: str


def selectors(models: tuple[str, ...], tags: tuple[str, ...], devices: tuple[str, ...]) -> str:
    parts = [f"model={m}" for m in models] + [f"tag={t}" for t in tags] + (["device"] if devices else [])
    return ",".join(parts)


async def resolve(
    conn: Conn, models: tuple[str, ...], tags: tuple[str, ...], devices: tuple[str, ...]
) -> list[Target]:
    """Every device matched by any of the models, tags or explicit ids (ids not seen yet included)."""
    cur = await conn.execute(
        """
        select device_id, model,
               case when model = any(%(models)s) then 'model=' || model
                    when tags && %(tags)s then 'tag=' || array_to_string(
                        array(select unnest(tags) intersect select unnest(%(tags)s::text[])), '+')
                    else 'device' end
        from devices
        where model = any(%(models)s) or tags && %(tags)s or device_id = any(%(devices)s)
        order by device_id
        """,
        {"models": list(models), "tags": list(tags), "devices": list(devices)},
    )
    found = {row[0]: Target(row[0], row[1], row[2]) for row in await cur.fetchall()}
    for device_id in devices:
        found.setdefault(device_id, Target(device_id, None, "device"))
    return [found[d] for d in sorted(found)]


async def save(
    conn: Conn,
    protocol: TreatmentProtocol,
    signed: SignedDocument,
    by: str,
    targets: list[Target],
    gate_overridden: Sequence[str] = (),
    override_reason: str = "",
) -> bool:
    """Store the version (if new) and make it the desired protocol of each target, in one transaction.
    Returns True if the version is new. Raises VersionConflict for a changed document. Each device in
    `gate_overridden` (blocked, sent to anyway) is recorded in `protocol_gate_overrides` with the reason."""
    from psycopg.types.json import Jsonb

    document = msgspec.to_builtins(protocol)
    async with conn.transaction():
        cur = await conn.execute(
            "insert into protocols (protocol_id, version, document, signed, key_id, published_by) "
            "values (%s, %s, %s, %s, %s, %s) on conflict do nothing returning 1",
            (
                protocol.protocol_id,
                protocol.version,
                Jsonb(document),
                Jsonb(msgspec.to_builtins(signed)),
                signed.key_id,
                by,
            ),
        )
        new = await cur.fetchone() is not None
        if not new:
            cur = await conn.execute(
                "select document from protocols where protocol_id = %s and version = %s",
                (protocol.protocol_id, protocol.version),
            )
            row = await cur.fetchone()
            if row is None or not same_document(row[0], protocol):
                raise VersionConflict(
                    f"{protocol.protocol_id} version {protocol.version} was already published with a "
                    f"different document: publish it as version {protocol.version + 1} (or higher); "
                    "re-sending the same file is allowed"
                )
        async with conn.cursor() as c:
            await c.executemany(
                "insert into protocol_assignments (device_id, protocol_id, version, selector, assigned_by) "
                "values (%s, %s, %s, %s, %s) on conflict (device_id) do update set "
                "protocol_id = excluded.protocol_id, version = excluded.version, "
                "selector = excluded.selector, assigned_at = now(), assigned_by = excluded.assigned_by",
                [(t.device_id, protocol.protocol_id, protocol.version, t.selector, by) for t in targets],
            )
            if gate_overridden:
                await c.executemany(
                    "insert into protocol_gate_overrides (device_id, protocol_id, version, reason, by_whom) "
                    "values (%s, %s, %s, %s, %s)",
                    [
                        (d, protocol.protocol_id, protocol.version, override_reason, by)
                        for d in gate_overridden
                    ],
                )
    return new


def same_document(stored: Any, protocol: TreatmentProtocol) -> bool:
    """Pure: whether a stored `document` (JSON as read back) is `protocol` (a re-send, not a change)."""
    try:
        return msgspec.convert(stored, TreatmentProtocol) == protocol
    except msgspec.ValidationError:
        return False


_SELECT = "select document, signed, key_id, published_at, published_by from protocols "


def _published(row: tuple[Any, ...]) -> Published:
    return Published(
        msgspec.convert(row[0], TreatmentProtocol),
        msgspec.convert(row[1], SignedDocument),
        str(row[2]),
        row[3],
        str(row[4]),
    )


async def get(conn: Conn, protocol_id: str, version: int | None = None) -> Published | None:
    """One version (the latest if `version` is None)."""
    if version is None:
        cur = await conn.execute(
            _SELECT + "where protocol_id = %s order by version desc limit 1", (protocol_id,)
        )
    else:
        cur = await conn.execute(_SELECT + "where protocol_id = %s and version = %s", (protocol_id, version))
    row = await cur.fetchone()
    return _published(row) if row else None


@dataclass(frozen=True, slots=True)
class Summary:
    protocol_id: str
    version: int
    key_id: str
    published_at: datetime
    published_by: str
    assigned: int  # devices whose desired protocol is this version


async def list_versions(conn: Conn, protocol_id: str | None = None, limit: int = 100) -> list[Summary]:
    cur = await conn.execute(
        """
        select p.protocol_id, p.version, p.key_id, p.published_at, p.published_by,
               (select count(*) from protocol_assignments a
                where a.protocol_id = p.protocol_id and a.version = p.version)
        from protocols p
        where %(id)s::text is null or p.protocol_id = %(id)s
        order by p.protocol_id, p.version desc
        limit %(limit)s
        """,
        {"id": protocol_id, "limit": limit},
    )
    return [Summary(r[0], r[1], r[2], r[3], r[4], int(r[5])) for r in await cur.fetchall()]
