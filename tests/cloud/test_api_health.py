"""Liveness, readiness (database reachable + migrations applied) and Prometheus metrics over real HTTP."""

from __future__ import annotations

import hashlib
import math
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud.api.models import Role
from cloud.config import CloudConfig
from cloud.db.migrate import MIGRATIONS_DIR, migrate
from tests.cloud.test_api_support import ApiServer, execute, migrated_database, mint, serve, wait_for
from tests.support.services import TcpProxy, free_port


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with migrated_database() as d:
        yield d


@pytest.fixture(scope="module")
def api(dsn: str) -> Iterator[ApiServer]:
    with serve(CloudConfig(database_url=dsn)) as server:
        yield server


def samples(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_live_and_ready(api: ApiServer) -> None:
    with api.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        r = http.get("/readyz")
    assert r.status_code == 200
    assert r.json()["ready"] is True and r.json()["missing_migrations"] == []
    assert r.json()["storage_path"] in ("plain", "timescale")


def test_not_ready_without_migrations(database_url: str) -> None:
    with serve(CloudConfig(database_url=database_url)) as api, api.client() as http:
        assert http.get("/healthz").status_code == 200  # alive all the same
        r = http.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["database"] is True and body["ready"] is False
        assert "0300_api.sql" in body["missing_migrations"]
        assert "microfleet db migrate" in body["detail"]
        migrate(database_url)
        assert http.get("/readyz").status_code == 200


def test_not_ready_when_a_migration_is_missing(database_url: str, tmp_path: Path) -> None:
    """A database migrated by an older release (without the API's 03xx migrations) is not ready for this API."""
    for f in MIGRATIONS_DIR.glob("*.sql"):
        if not f.name.startswith("03"):
            (tmp_path / f.name).write_text(f.read_text())
    migrate(database_url, directory=tmp_path)
    with serve(CloudConfig(database_url=database_url)) as api, api.client() as http:
        r = http.get("/readyz")
    assert r.status_code == 503
    assert r.json()["missing_migrations"] == ["0300_api.sql", "0301_api_health_grant.sql"]


def test_not_ready_when_the_database_is_cut(dsn: str) -> None:
    proxy = TcpProxy(5432)
    try:
        proxied = dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        token = mint(dsn, Role.VIEWER)
        with serve(CloudConfig(database_url=proxied), db_timeout_s=1.0) as api, api.client(token) as http:
            assert http.get("/readyz").status_code == 200
            proxy.cut()
            r = http.get("/readyz")
            assert r.status_code == 503 and r.json()["database"] is False
            down = http.get("/devices")
            assert down.status_code == 503 and "unavailable" in down.json()["detail"]
            assert http.get("/healthz").status_code == 200
            proxy.heal()  # the pool reconnects with its backoff (1 s, 2 s, 4 s...)
            wait_for(
                lambda: http.get("/readyz").status_code == 200, 20, "readiness after the database is back"
            )
            assert http.get("/devices").status_code == 200
    finally:
        proxy.close()


def test_metrics_count_requests_by_route(api: ApiServer, dsn: str) -> None:
    token = mint(dsn, Role.VIEWER)
    with api.client(token) as http:
        for device in ("m-1", "m-2", "m-3"):
            assert http.get(f"/devices/{device}").status_code == 404
        before = samples(http)
        http.get("/devices/m-4")
        after = samples(http)
    key = (
        "microfleet_api_requests_total",
        (("method", "GET"), ("route", "/devices/{device_id}"), ("status", "404")),
    )
    assert before[key] == 3 and after[key] == 4  # one series per route template, not per device
    count = (
        "microfleet_api_request_duration_seconds_count",
        (("method", "GET"), ("route", "/devices/{device_id}")),
    )
    assert after[count] == 4


def test_metrics_read_from_the_database(api: ApiServer, dsn: str) -> None:
    with api.client() as http:
        assert samples(http)[("microfleet_ingest_lag_seconds", ())] == math.inf  # nothing stored yet
        now = datetime.now(UTC)
        execute(
            dsn,
            "insert into quarantine (topic, payload, payload_sha256, reason) values (%s, %s, %s, %s)",
            [(f"t/{i}", b"x%d" % i, hashlib.sha256(b"x%d" % i).digest(), r) for i, r in enumerate("aab")],
        )
        execute(
            dsn,
            "insert into uplink_log (device_id, seq, kind, sent_at, stored_at) values (%s, %s, %s, %s, %s)",
            [("lag-1", 1, "batch", now - timedelta(seconds=50), now - timedelta(seconds=40))],
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("analyze quarantine")
        got = samples(http)
    assert got[("microfleet_quarantine_rows", (("reason", "a"),))] == 2
    assert got[("microfleet_quarantine_rows", (("reason", "b"),))] == 1
    assert 40 <= got[("microfleet_ingest_lag_seconds", ())] < 100
    assert got[("microfleet_table_rows_estimate", (("relation", "quarantine"),))] == 3
    assert ("microfleet_table_rows_estimate", (("relation", "samples"),)) in got


def test_cli_serves_the_api(dsn: str) -> None:
    port = free_port()
    cmd = [sys.executable, "-c", "from cloud.api.cli import app; app()", "serve", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--database-url", dsn, "--log-level", "info"], stderr=subprocess.PIPE, text=True
    )
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 20, "`microfleet api serve` to answer /readyz")
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Finished server process" in err and "Traceback" not in err
