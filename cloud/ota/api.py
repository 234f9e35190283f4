"""HTTP endpoints for OTA (an APIRouter the API app includes): releases, rollouts, progress, operations.
Viewers read; operators create, pause, resume, cancel and roll back. The artifact download route is in
server.py (no token: integrity comes from the signed manifest)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field

from cloud.api.deps import AUTH_ERRORS, Conn, Operator, Viewer, problems
from cloud.ota import listing, store
from cloud.ota.artifacts import ReleaseRefused, artifact_dir
from cloud.ota.rollout import RolloutPlan
from contract.signing import TrustedKey, TrustStore

RolloutAction = Literal["pause", "resume", "cancel", "cancel-force", "rollback"]
RolloutStatus = Literal["running", "paused", "cancelling", "cancelled", "completed"]
router = APIRouter(prefix="/ota", tags=["ota"], responses=AUTH_ERRORS)


class RolloutIn(BaseModel):
    version: str
    models: list[str] = []
    hw_revs: list[str] = []
    fw_versions: list[str] = []
    tags: list[str] = []
    plan: dict[str, Any] = Field(default_factory=dict, description="cloud.ota.rollout.RolloutPlan fields")


def _trust() -> TrustStore:
    path = os.environ.get("MICROFLEET_OTA_TRUSTED_KEYS")
    if not path:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "set MICROFLEET_OTA_TRUSTED_KEYS on the API server"
        )
    return TrustStore(msgspec.json.decode(Path(path).read_bytes(), type=list[TrustedKey]))


def _refused(exc: ReleaseRefused) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, str(exc))


async def _view(conn: Any, rollout_id: int) -> dict[str, Any]:
    return await listing.rollout_view(conn, rollout_id)


class RolloutSummary(BaseModel):
    rollout_id: int
    version: str = Field(description="the firmware release rolled out")
    status: RolloutStatus
    wave: int = Field(description="the wave being rolled out")
    reason: str
    rollback_of: int | None = Field(description="the rollout this one rolls back, if any")
    created_at: datetime
    updated_at: datetime
    devices: int = Field(description="targeted devices (one job each)")
    succeeded: int
    failed: int = Field(description="failed or rolled back")
    pending: int = Field(description="not sent yet")


@router.get("/releases", summary="Firmware releases, oldest version code first")
async def releases(conn: Conn, _: Viewer) -> list[dict[str, Any]]:
    return await listing.releases(conn)


@router.get("/rollouts", summary="Rollouts, newest first, with their device counts")
async def rollouts(
    conn: Conn,
    _: Viewer,
    status: RolloutStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RolloutSummary]:
    return [RolloutSummary(**r) for r in await listing.rollouts(conn, status, limit)]


@router.post("/rollouts", status_code=201, summary="Create a staged rollout", responses=problems(400, 409))
async def create(body: RolloutIn, conn: Conn, _: Operator) -> dict[str, Any]:
    try:
        plan = msgspec.convert(body.plan, RolloutPlan)
    except (msgspec.ValidationError, ValueError) as exc:
        raise HTTPException(400, f"plan: {exc}") from None
    targets = store.Targets(
        tuple(body.models), tuple(body.hw_revs), tuple(body.fw_versions), tuple(body.tags)
    )
    try:
        rid = await store.create_rollout(
            conn, body.version, targets, plan, store=artifact_dir(), trust=_trust(), now=datetime.now(UTC)
        )
    except ReleaseRefused as exc:
        raise _refused(exc) from None
    return await _view(conn, rid)


@router.get("/rollouts/{rollout_id}", summary="Progress: counts per state per wave", responses=problems(404))
async def progress(rollout_id: int, conn: Conn, _: Viewer) -> dict[str, Any]:
    try:
        return await _view(conn, rollout_id)
    except ReleaseRefused as exc:
        raise HTTPException(404, str(exc)) from None


@router.post(
    "/rollouts/{rollout_id}/{action}",
    summary="pause | resume | cancel | cancel-force | rollback",
    responses=problems(400, 404, 409),
)
async def act(rollout_id: int, action: RolloutAction, conn: Conn, _: Operator) -> dict[str, Any]:
    try:
        if action == "pause":
            await store.pause(conn, rollout_id)
        elif action == "resume":
            await store.resume(conn, rollout_id)
        elif action in ("cancel", "cancel-force"):
            await store.cancel(conn, rollout_id, force=action == "cancel-force")
        elif action == "rollback":
            rid = await store.rollback(
                conn,
                rollout_id,
                RolloutPlan(percents=(10.0, 100.0), soak_s=0),
                store=artifact_dir(),
                trust=_trust(),
                now=datetime.now(UTC),
            )
            return await _view(conn, rid)
        else:
            raise HTTPException(
                404, f"unknown action {action!r}: pause, resume, cancel, cancel-force or rollback"
            )
    except ReleaseRefused as exc:
        raise _refused(exc) from None
    return await _view(conn, rollout_id)
