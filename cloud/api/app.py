"""The HTTP API's composition root: `create_app(config)`.

The lifespan opens the PostgreSQL pool (and closes it on shutdown); every router is one resource module
under `routers/`. Routers for alerts and OTA/protocols are added here the same way when their tables exist.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import psycopg
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from cloud.alerts import api as alerts_api
from cloud.alerts import params_api as alert_params_api
from cloud.api.metrics import ApiMetrics, MetricsMiddleware
from cloud.api.routers import credentials, devices, health, quarantine, sessions, tags, tokens, usage
from cloud.audit import api as audit_api
from cloud.config import CloudConfig
from cloud.db.migrate import read_files
from cloud.db.pool import describe
from cloud.ota import api as ota_api
from cloud.ota import server as ota_server
from cloud.protocols import api as protocols_api

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

DESCRIPTION = """\
The microfleet fleet API: devices (registration, profile and contraindication flags, state, broker
credentials), sessions, usage rollups, quarantine, tokens, health, readiness and Prometheus metrics.

Authenticate with `Authorization: Bearer <token>`. Roles are ordered viewer < operator < admin: viewers
read, operators act (alerts, rollouts), admins manage devices, credentials and tokens. Mint the first
admin token with `microfleet api token create --name <you> --role admin`.
"""


def utc_now() -> datetime:
    return datetime.now(UTC)


def create_app(
    config: CloudConfig,
    *,
    clock: Clock = utc_now,
    pool_max_size: int = 8,
    db_timeout_s: float = 3.0,
    metrics_refresh_s: float = 5.0,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Autocommit: a read is one statement; a write of several statements opens `conn.transaction()`,
        # so it is committed before the answer leaves (dependency exit code runs after the response).
        pool = AsyncConnectionPool(
            config.database_url,
            min_size=1,
            max_size=pool_max_size,
            name="api",
            kwargs={"autocommit": True, "connect_timeout": 5},
            timeout=db_timeout_s,  # a request waits this long for a connection, then gets a 503
            check=AsyncConnectionPool.check_connection,  # drop connections broken by a database restart
            open=False,
        )
        # wait=False: the API starts (and /healthz answers) even while the database is down; /readyz tells.
        await pool.open(wait=False)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="microfleet API", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.config = config
    app.state.clock = clock
    app.state.db_timeout_s = db_timeout_s
    app.state.migration_files = read_files()
    app.state.metrics = ApiMetrics(min_refresh_s=metrics_refresh_s)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)

    for module in (
        health,
        devices,
        tags,
        credentials,
        sessions,
        usage,
        quarantine,
        tokens,
        alerts_api,
        alert_params_api,
        audit_api,
        protocols_api,
        ota_api,
        ota_server,
    ):
        app.include_router(module.router)

    database = describe(config.database_url)

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return JSONResponse(
            {"detail": f"the database ({database}) is unavailable; retry later (see /readyz)"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(psycopg.DataError)
    async def data_error(_request: Request, exc: Exception) -> JSONResponse:
        """A value the database cannot hold that validation let through: the client's to fix (422)."""
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return JSONResponse(
            {
                "detail": [
                    {"type": "value_error", "loc": ["request"], "msg": f"the database refused a value: {msg}"}
                ]
            },
            status_code=422,
        )

    return app
