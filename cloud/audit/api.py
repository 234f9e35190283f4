"""`GET /audit`: the safety audit trails, newest first (the query of `microfleet audit list`).

Admins only: the audit names who read which device's health data and who weakened which device's safety
limits, and is for ops and compliance, not every viewer. It is the audit rows and nothing more: no health
data is joined in, so the health-data grant is neither needed nor implied."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, Field

from cloud.api.deps import AUTH_ERRORS, Admin, Conn
from cloud.api.models import DEVICE_ID_REGEX, NO_NUL
from cloud.audit.queries import Kind, Selection, list_entries_async

router = APIRouter(prefix="/audit", tags=["audit"], responses=AUTH_ERRORS)


class AuditEntryOut(BaseModel):
    kind: Kind
    id: int = Field(description="the row's id in its own table")
    at: datetime
    device_id: str
    by: str = Field(description="who acted: the person or token name (health-reads: the token's name)")
    reason: str = Field(description="the reason given ('' for health-reads)")
    detail: dict[str, Any] = Field(
        description="the rest of the row as stored: overrides {before, after, weakened, confirmed}; "
        "gates {protocol_id, version}; health-reads {token_id, route}"
    )


@router.get("", summary="Audit rows, newest first: override changes, gate overrides, health-data reads")
async def list_audit(
    conn: Conn,
    _who: Admin,
    kind: Annotated[list[Kind] | None, Query(description="repeat for several; default: all")] = None,
    device_id: Annotated[str | None, Query(pattern=DEVICE_ID_REGEX)] = None,
    by: Annotated[
        str | None, Query(max_length=100, pattern=NO_NUL, description="who acted (or the token name)")
    ] = None,
    since: Annotated[AwareDatetime | None, Query(description="at >= since")] = None,
    until: Annotated[AwareDatetime | None, Query(description="at < until")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntryOut]:
    sel = Selection(tuple(kind or ()), device_id, by, since, until, limit)
    return [
        AuditEntryOut(
            kind=e.kind, id=e.id, at=e.at, device_id=e.device_id, by=e.by, reason=e.reason, detail=e.detail
        )
        for e in await list_entries_async(conn, sel)
    ]
