"""HTTP endpoints for treatment protocols (an APIRouter; the API's composition root includes it).

    POST /protocols                      publish (operator): 201, or 422 naming each field and limit;
                                         devices with a blocked safety gate are skipped (listed), 409 if all
    GET  /protocols                      published versions
    GET  /protocols/{id}?version=        one version (default: the latest) with its signed document
    GET  /protocols/{id}/status?version= converged / rejected / pending counts

The signing key is read from MICROFLEET_SIGNING_KEY_FILE (or `app.state.signing_key`); the broker is
`CloudConfig.mqtt_url`. The publish answers after the broker has acknowledged every message; for a very
large fleet use the CLI (same code) so that no HTTP timeout cuts it short.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, Field

from cloud.api.deps import AUTH_ERRORS, Conn, Operator, Viewer, problems
from cloud.api.models import Role
from cloud.protocols import store
from cloud.protocols.progress import progress
from cloud.protocols.publish import (
    GateBlocked,
    InvalidProtocol,
    PublishError,
    Refused,
    Targets,
    load_signing_key,
    parse_protocol,
    publish,
)
from contract.signing import SigningKey

router = APIRouter(prefix="/protocols", tags=["protocols"], responses=AUTH_ERRORS)
ProtocolPath = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="protocol id")]


class PublishIn(BaseModel):
    protocol: dict[str, Any] = Field(description="a TreatmentProtocol (contract/protocol.py)")
    to_models: list[str] = []
    to_tags: list[str] = []
    devices: list[str] = []
    rate_per_s: float = Field(500.0, gt=0, le=10_000)
    override_safety_gate: str = Field(
        "",
        max_length=500,
        description="A reason to send to devices whose safety gate is blocked (an open blocking "
        "contraindication) too; needs the admin role, recorded per device. Empty: they are skipped.",
    )


class PublishOut(BaseModel):
    protocol_id: str
    version: int
    new_version: bool
    devices: int
    sent: int
    refused: int
    seconds: float
    skipped_blocked: list[str] = Field(description="devices left out: their safety gate is blocked")
    gate_overridden: list[str] = Field(description="blocked devices sent to anyway (override_safety_gate)")


class VersionOut(BaseModel):
    protocol_id: str
    version: int
    key_id: str
    published_at: datetime
    published_by: str
    assigned: int


class ProtocolOut(BaseModel):
    protocol: dict[str, Any]
    signed: dict[str, Any]
    key_id: str
    published_at: datetime
    published_by: str


class ProgressOut(BaseModel):
    protocol_id: str
    version: int
    targeted: int
    converged: int
    rejected: int
    pending: int
    offline: int
    done: bool
    rejections: list[tuple[str, str]]


def _key(request: Request) -> SigningKey:
    key: SigningKey | None = getattr(request.app.state, "signing_key", None)
    if key is not None:
        return key
    try:
        return load_signing_key()
    except PublishError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None


def _refusal(exc: Refused) -> HTTPException:
    detail = [
        {
            "type": "hard_limit",
            "loc": ["body", "protocol", *v.field.replace("[", ".").replace("]", "").split(".")],
            "msg": f"{model}: {v}",
            "model": model,
            "field": v.field,
            "value": v.value,
            "limit": v.limit,
        }
        for model, vs in sorted(exc.by_model.items())
        for v in vs
    ]
    return HTTPException(422, detail)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Validate, sign, store and send a protocol to the targeted devices (retained desired state)",
    responses=problems(400, 404, 409, 502),
)
async def publish_protocol(request: Request, conn: Conn, who: Operator, body: PublishIn) -> PublishOut:
    try:
        protocol = parse_protocol(msgspec.json.encode(body.protocol))
        targets = Targets(tuple(body.to_models), tuple(body.to_tags), tuple(body.devices))
    except (InvalidProtocol, PublishError) as exc:
        raise HTTPException(422, [{"type": "value_error", "loc": ["body"], "msg": str(exc)}]) from None
    if body.override_safety_gate.strip() and who.role.rank < Role.ADMIN.rank:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"overriding a safety gate needs the admin role; token {who.name!r} has {who.role.value}",
        )
    key = _key(request)
    metrics = request.app.state.metrics
    try:
        result = await publish(
            conn,
            protocol,
            targets,
            key,
            request.app.state.config.mqtt_url,
            by=who.name,
            rate_per_s=body.rate_per_s,
            override_gate=body.override_safety_gate,
        )
    except Refused as exc:
        metrics.protocol_published("refused")
        raise _refusal(exc) from None
    except (store.VersionConflict, GateBlocked) as exc:
        metrics.protocol_published("conflict")
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except PublishError as exc:
        metrics.protocol_published("failed")
        code = status.HTTP_404_NOT_FOUND if "no device matches" in str(exc) else status.HTTP_502_BAD_GATEWAY
        raise HTTPException(code, str(exc)) from None
    metrics.protocol_published("sent", result.sent, result.refused)  # the API's /metrics
    return PublishOut(**msgspec.to_builtins(result))


@router.get("", summary="Published protocol versions, newest first")
async def list_protocols(
    conn: Conn, _who: Viewer, protocol_id: Annotated[str | None, Query(max_length=64)] = None
) -> list[VersionOut]:
    return [VersionOut(**msgspec.to_builtins(s)) for s in await store.list_versions(conn, protocol_id)]


async def _get(conn: Conn, protocol_id: str, version: int | None) -> store.Published:
    found = await store.get(conn, protocol_id, version)
    if found is None:
        raise HTTPException(404, f"no protocol {protocol_id}" + (f" v{version}" if version else ""))
    return found


@router.get("/{protocol_id}", summary="One protocol version (default: the latest)", responses=problems(404))
async def get_protocol(
    conn: Conn, _who: Viewer, protocol_id: ProtocolPath, version: Annotated[int | None, Query(ge=1)] = None
) -> ProtocolOut:
    p = await _get(conn, protocol_id, version)
    return ProtocolOut(
        protocol=msgspec.to_builtins(p.protocol),
        signed=msgspec.to_builtins(p.signed),
        key_id=p.key_id,
        published_at=p.published_at,
        published_by=p.published_by,
    )


@router.get(
    "/{protocol_id}/status",
    summary="Desired vs reported: converged, rejected, pending",
    responses=problems(404),
)
async def protocol_status(
    conn: Conn, _who: Viewer, protocol_id: ProtocolPath, version: Annotated[int | None, Query(ge=1)] = None
) -> ProgressOut:
    p = await _get(conn, protocol_id, version)
    prog = await progress(conn, protocol_id, p.protocol.version)
    return ProgressOut(**msgspec.to_builtins(prog), done=prog.done)
