"""Helpers of the API tests (no tests here): the real API served by uvicorn on a free port, against a
migrated scratch database, and tokens minted in that database."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import psycopg
import uvicorn

from cloud.api import tokens
from cloud.api.app import Clock, create_app, utc_now
from cloud.api.models import Role
from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from cloud.identity import provision
from cloud.identity.dynsec import DynsecClient
from tests.support.services import Mosquitto, free_port, scratch_database, secure_broker

START_TIMEOUT_S = 10.0


class ApiServer:
    """uvicorn serving create_app(config) in a thread of its own; `close()` stops it and joins the thread."""

    def __init__(self, config: CloudConfig, clock: Clock = utc_now, db_timeout_s: float = 3.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(config, clock=clock, metrics_refresh_s=0.0, db_timeout_s=db_timeout_s)
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        )
        self._thread = threading.Thread(target=self._server.run, name="api-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start on port {self.port}")
            time.sleep(0.01)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=15.0)

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "the API server thread did not stop"


@contextlib.contextmanager
def serve(config: CloudConfig, clock: Clock = utc_now, db_timeout_s: float = 3.0) -> Iterator[ApiServer]:
    server = ApiServer(config, clock, db_timeout_s)
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def migrated_database() -> Iterator[str]:
    with scratch_database("mf_api") as dsn:
        migrate(dsn)
        yield dsn


def mint(dsn: str, role: Role, name: str | None = None, health_data: bool = False) -> str:
    with psycopg.connect(dsn) as conn:
        token, _id = tokens.create_sync(conn, name or f"test-{role.value}", role, health_data)
    return token


def mint_all(dsn: str) -> dict[Role, str]:
    return {role: mint(dsn, role) for role in Role}


def execute(dsn: str, sql: str, rows: list[tuple[Any, ...]]) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(sql.encode(), rows)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` until it holds; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def fixed_clock(at: datetime) -> Clock:
    return lambda: at


@contextlib.contextmanager
def secured_broker(admin_password: str) -> Iterator[Mosquitto]:
    """A broker with the production overlay and the service roles in place (what the credentials routes need)."""
    broker = secure_broker(admin_password)
    broker.start()
    try:
        with DynsecClient(broker.url, "admin", admin_password) as admin:
            provision.bootstrap(admin)
        yield broker
    finally:
        broker.close()


@contextlib.contextmanager
def serve_with_broker(dsn: str, broker: Mosquitto, admin_password: str) -> Iterator[ApiServer]:
    """The API with broker administration: device credentials are provisioned on `broker`."""
    config = CloudConfig(
        database_url=dsn,
        broker_admin_url=f"mqtt://admin:{admin_password}@127.0.0.1:{broker.port}",
        device_mqtt_url=broker.url,
    )
    with serve(config) as server:
        yield server
