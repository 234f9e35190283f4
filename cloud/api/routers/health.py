"""Liveness (`/healthz`), readiness (`/readyz`: database reachable and every migration applied) and
Prometheus metrics (`/metrics`). None of them needs a token: expose them on the internal network only."""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, Request, Response
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from cloud.api.deps import get_pool
from cloud.api.models import Health, Readiness
from cloud.db.migrate import MigrationError, StoragePath, select_migrations

router = APIRouter(tags=["health"])

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


def missing_migrations(files: dict[str, str], path: StoragePath, applied: dict[str, str]) -> list[str]:
    """Pure: the migration files of `path` not applied (or applied with other contents)."""
    return [m.filename for m in select_migrations(files, path) if applied.get(m.version) != m.checksum]


async def _readiness(pool: AsyncConnectionPool, files: dict[str, str], timeout_s: float) -> Readiness:
    try:
        async with pool.connection(timeout=timeout_s) as conn:
            row = await (await conn.execute("select to_regclass('schema_migrations') is not null")).fetchone()
            if row is None or not row[0]:
                return Readiness(
                    ready=False,
                    database=True,
                    storage_path=None,
                    missing_migrations=sorted(files),
                    detail="the database has no schema: run `microfleet db migrate`",
                )
            rows: list[Any] = await (
                await conn.execute("select version, checksum, path from schema_migrations")
            ).fetchall()
    except (psycopg.Error, PoolTimeout) as exc:
        return Readiness(
            ready=False,
            database=False,
            storage_path=None,
            missing_migrations=[],
            detail=f"the database is unreachable: {str(exc).strip() or type(exc).__name__}",
        )
    applied = {str(r[0]): str(r[1]) for r in rows}
    path = StoragePath(str(rows[0][2])) if rows else StoragePath.PLAIN
    try:
        missing = missing_migrations(files, path, applied)
    except MigrationError as exc:
        return Readiness(
            ready=False, database=True, storage_path=path, missing_migrations=[], detail=str(exc)
        )
    return Readiness(
        ready=not missing,
        database=True,
        storage_path=path.value,
        missing_migrations=missing,
        detail="run `microfleet db migrate`" if missing else None,
    )


@router.get(
    "/readyz",
    summary="Readiness: the database answers and every migration is applied",
    responses={503: {"model": Readiness, "description": "not ready; `detail` says what to do"}},
)
async def readyz(
    request: Request, response: Response, pool: Annotated[AsyncConnectionPool, Depends(get_pool)]
) -> Readiness:
    state = request.app.state
    readiness = await _readiness(pool, state.migration_files, state.db_timeout_s)
    if not readiness.ready:
        response.status_code = 503
    return readiness


@router.get(
    "/metrics",
    summary="Prometheus metrics: API requests and latency, quarantine rows, ingest lag, table rows",
    response_class=Response,
    responses={200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request, pool: Annotated[AsyncConnectionPool, Depends(get_pool)]) -> Response:
    registry = request.app.state.metrics
    await registry.refresh(pool)
    return Response(registry.render(), media_type=PROMETHEUS_TEXT)
