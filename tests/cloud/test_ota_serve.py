"""`microfleet ota serve` shuts down cleanly on SIGTERM: the rollout loop stops after the tick in hand,
its broker connection ends with a DISCONNECT (mosquitto logs "disconnected", not "closed its
connection"), and the process exits 0. It used to die on the signal's default action (exit -15)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from psycopg import AsyncConnection

from cloud.db.migrate import migrate
from cloud.ota import store
from cloud.ota.artifacts import add_release
from cloud.ota.rollout import RolloutPlan
from tests.cloud.test_alerts_engine_support import query, wait_for
from tests.cloud.test_ota_rollout import KEY, TRUST, seed
from tests.support.services import ROOT, Mosquitto

pytestmark = pytest.mark.slow


@pytest.fixture
def chatty_broker() -> Iterator[Mosquitto]:
    """A private mosquitto that logs every connection and how it ended."""
    b = Mosquitto(extra_conf="connection_messages true")
    b.start()
    try:
        yield b
    finally:
        b.close()


async def _running_rollout(database_url: str, tmp_path: Path) -> int:
    src = tmp_path / "fw.bin"
    src.write_bytes(b"firmware" * 100)
    art = tmp_path / "store"
    now = datetime.now(UTC)
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        await seed(conn, ["serve-1", "serve-2"])
        await add_release(
            conn, art, src, version="1.1.0", version_code=2, models=("mf-home-1",), key=KEY, now=now
        )
        return await store.create_rollout(
            conn, "1.1.0", store.Targets(), RolloutPlan(percents=(100,)), store=art, trust=TRUST, now=now
        )


def test_sigterm_stops_the_rollout_loop_disconnects_and_exits_0(
    chatty_broker: Mosquitto, database_url: str, tmp_path: Path
) -> None:
    migrate(database_url)
    rid = asyncio.run(_running_rollout(database_url, tmp_path))
    env = {**os.environ, "MICROFLEET_DATABASE_URL": database_url, "MICROFLEET_MQTT_URL": chatty_broker.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "ota", "serve", "--artifact-base-url", "http://127.0.0.1:9/a"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        # the rollout loop runs and the broker took both jobs
        try:
            wait_for(
                lambda: (
                    query(
                        database_url,
                        "select count(*) from ota_device_jobs where rollout_id = %s and state = 'sent'",
                        rid,
                    )[0][0]
                    == 2
                ),
                30,
                "both jobs sent",
            )
        except AssertionError:
            raise AssertionError(f"jobs not sent; `ota serve` said:\n{''.join(lines)}") from None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(5)
    out = "".join(lines)
    assert code == 0, out
    assert took < 5, f"{took:.1f} s to stop:\n{out}"
    assert "OTA service stopped" in out, out
    broker_log = (chatty_broker.workdir / "mosquitto.log").read_text()
    ota = [line for line in broker_log.splitlines() if "Client ota-" in line and "New client" not in line]
    assert ota and all(line.endswith("disconnected.") for line in ota), broker_log
