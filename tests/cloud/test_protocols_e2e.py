"""End to end on a real broker and PostgreSQL: `microfleet protocol publish` (the CLI, as a process) reaches
real edge agents, they verify and apply it and report the version in their Status birth, ingest stores
it, and `protocol status` shows them converged. A device that was offline during the publish converges
when it reconnects (the document is retained); a device that does not trust the key rejects it and is
counted as such."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import psycopg
import pytest

from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from cloud.ingest.service import IngestService
from contract.protocol import starter_protocol
from contract.signing import SigningKey
from edge.app import Agent
from tests.cloud.test_api_support import wait_for
from tests.edge.conftest import fast_config
from tests.support.services import ROOT, Mosquitto

pytestmark = pytest.mark.slow
DEVICES = 20
CLI = "from cloud.protocols.cli import app; app(prog_name='microfleet protocol')"


def scalar(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql.encode()).fetchone()
    return int(row[0]) if row else 0


async def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLI,
        *args,
        env=os.environ | env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def until(predicate: object, timeout_s: float, what: str) -> None:
    await asyncio.to_thread(wait_for, predicate, timeout_s, what)  # type: ignore[arg-type]


async def test_publish_reaches_real_agents_and_status_shows_them_converged(
    tmp_path: Path, broker: Mosquitto, database_url: str
) -> None:
    dsn = database_url
    migrate(dsn)
    key = SigningKey.generate()
    (tmp_path / "signing.pem").write_bytes(key.to_pem())
    trust = tmp_path / "trusted-keys.json"
    trust.write_bytes(msgspec.json.encode(key.trusted()))
    protocol = msgspec.structs.replace(starter_protocol(datetime.now(UTC)), version=3)
    (tmp_path / "protocol.json").write_bytes(msgspec.json.encode(protocol))
    env = {
        "MICROFLEET_DATABASE_URL": dsn,
        "MICROFLEET_MQTT_URL": broker.url,
        "MICROFLEET_SIGNING_KEY_FILE": str(tmp_path / "signing.pem"),
    }
    ingest = IngestService(
        CloudConfig(
            database_url=dsn, mqtt_url=broker.url, consumer_id="ingest-protocols", batch_max_delay_s=0.02
        ),
        housekeeping=False,
        stats_interval_s=1.0,
    )
    ingest.start()
    try:
        assert ingest.consumer.subscribed_event.wait(10)

        def agent(i: int, trusted: bool = True) -> Agent:
            extra = {"trusted_keys_file": trust} if trusted else {}
            return Agent(fast_config(tmp_path / f"d{i}", broker.url, device_id=f"proto-{i:02d}", **extra))

        async with contextlib.AsyncExitStack() as stack:
            for i in range(DEVICES - 1):
                await stack.enter_async_context(agent(i))
            await stack.enter_async_context(agent(99, trusted=False))
            async with agent(19):  # the last one goes offline before the publish
                await until(
                    lambda: scalar(dsn, "select count(*) from devices where state = 'online'") == DEVICES + 1,
                    20,
                    "every agent's birth in the database",
                )
            await until(
                lambda: scalar(dsn, "select count(*) from devices where state = 'offline'") == 1,
                10,
                "proto-19's offline status in the database",
            )
            code, out = await cli(
                env,
                "publish",
                str(tmp_path / "protocol.json"),
                "--to-model",
                "mf-home-1",
                "--device",
                "proto-19",
            )
            assert code == 0, out
            assert f"home-starter v3 published to {DEVICES + 1} devices ({DEVICES + 1} acknowledged" in out
            converged = (
                "select count(*) from devices where protocol_id = 'home-starter' and protocol_version = 3"
            )
            await until(lambda: scalar(dsn, converged) == DEVICES - 1, 30, "the online agents to report v3")
            await until(
                lambda: (
                    scalar(dsn, "select count(*) from device_events where event = 'protocol_rejected'") == 1
                ),
                10,
                "the untrusting agent's rejection",
            )
            code, out = await cli(env, "status", "home-starter", "--json")
            status = json.loads(out)
            assert (status["targeted"], status["converged"], status["rejected"], status["pending"]) == (
                DEVICES + 1,
                DEVICES - 1,
                1,
                1,
            )
            assert status["offline"] == 1 and status["rejections"][0][0] == "proto-99"
            assert "unknown key" in status["rejections"][0][1]

            await stack.enter_async_context(agent(19))  # back online: the retained document is there
            await until(lambda: scalar(dsn, converged) == DEVICES, 30, "the late agent to report v3")
            code, out = await cli(env, "status", "home-starter")
            assert code == 0, out
            assert (
                f"home-starter v3: {DEVICES + 1} targeted, {DEVICES} converged, 1 rejected, 0 pending" in out
            )
            applied = scalar(
                dsn, "select count(*) from device_events where event = 'protocol_applied' and value = 3"
            )
            assert applied == DEVICES
    finally:
        ingest.stop(grace_s=5)
