"""The services as users start them: `microfleet ingest` as a process serves /metrics and /readyz while it
runs, and every service logs through cloud/runtime/logs.py (MICROFLEET_LOG_FORMAT=json: one JSON object a
line with time, level, logger, message and exception)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading

import httpx
import pytest

from bench._common import wait_until
from cli.localbroker import free_port
from cloud.db.migrate import migrate
from cloud.runtime import logs
from tests.support.services import ROOT, Mosquitto


def test_json_format_one_object_per_line_with_the_exception() -> None:
    out = io.StringIO()
    logs.setup(env={"MICROFLEET_LOG_FORMAT": "json"}, stream=out)
    try:
        log = logging.getLogger("mf.test")
        log.info("stored %d messages", 3)
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError:
            log.exception("batch failed")
        log.debug("not shown at info")
    finally:
        logs.setup(env={}, stream=sys.stderr)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert (
        first["level"] == "INFO" and first["logger"] == "mf.test" and first["message"] == "stored 3 messages"
    )
    assert first["time"].endswith("+00:00") and "exception" not in first
    assert second["message"] == "batch failed" and second["level"] == "ERROR"
    assert "RuntimeError: boom" in second["exception"] and "Traceback" in second["exception"]


def test_unknown_log_settings_are_refused_with_the_choices() -> None:
    with pytest.raises(logs.LogSettingError, match="use text or json"):
        logs.settings(env={"MICROFLEET_LOG_FORMAT": "xml"})
    with pytest.raises(logs.LogSettingError, match="MICROFLEET_LOG_LEVEL"):
        logs.settings(env={"MICROFLEET_LOG_LEVEL": "loud"})
    assert logs.settings(True, env={}) == (logging.DEBUG, "text")


@pytest.mark.slow
def test_microfleet_ingest_process_serves_metrics_and_logs_json(broker: Mosquitto, database_url: str) -> None:
    migrate(database_url)
    port = free_port()
    env = {
        **os.environ,
        "MICROFLEET_DATABASE_URL": database_url,
        "MICROFLEET_MQTT_URL": broker.url,
        "MICROFLEET_METRICS_PORT": str(port),
        "MICROFLEET_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "ingest", "--consumer-id", "ingest-cli-m", "--no-housekeeping"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(base + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, 30, what="`microfleet ingest` ready on its metrics port")
        body = httpx.get(base + "/metrics", timeout=5).text
        assert "microfleet_ingest_messages_total 0.0" in body
        assert 'microfleet_ready{check="database"} 1.0' in body
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        reader.join(5)
    assert code == 0, "".join(lines)
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("metrics on http://127.0.0.1:" in r["message"] for r in records)
    assert any(r["logger"] == "cloud.ingest.service" and "stopped" in r["message"] for r in records)


@pytest.mark.slow
def test_api_serve_logs_json_uvicorn_included(database_url: str) -> None:
    migrate(database_url)
    port = free_port()
    env = {**os.environ, "MICROFLEET_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "api",
            "serve",
            "--port",
            str(port),
            "--database-url",
            database_url,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, 30, what="`microfleet api serve` ready")
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=15)
    records = [json.loads(line) for line in err.splitlines()]
    assert any(r["logger"].startswith("uvicorn") and "startup complete" in r["message"] for r in records)
    assert any(r["logger"] == "uvicorn.access" and "/readyz" in r["message"] for r in records)
