"""Helpers for the OTA tests (no tests here): an artifact server over real HTTP (uvicorn, the project's
artifact router) that can stall mid-file, signed releases, publishing a job, and an agent runner that
"reboots" (leaves and re-enters the Agent context) when the OTA client asks for it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import uvicorn
from fastapi import FastAPI

from cli.localbroker import free_port, wait_port
from cloud.ota.server import artifact_router
from contract.codec import encode
from contract.messages import OtaReport, OtaState
from contract.mqtturl import parse_mqtt_url
from contract.ota import TERMINAL, FirmwareManifest, OtaAction, OtaJob
from contract.signing import SignedDocument, SigningKey
from contract.topics import Downlink, downlink
from edge.app import Agent
from edge.config import EdgeConfig
from edge.ota.planner import OtaSettings
from tests.edge.conftest import Collector

FAST = OtaSettings(
    retry_min_s=0.05, retry_max_s=0.5, stall_timeout_s=1.0, connect_timeout_s=2.0, health_timeout_s=5.0
)


class StallingApp:
    """ASGI wrapper: while `stall_after` is set, a download sends the bytes up to that offset, then hangs
    (a cut that the device must detect by its stall timeout, or a power loss mid-download)."""

    def __init__(self, app: Any, directory: Path) -> None:
        self.app, self.directory = app, directory
        self.stall_after: int | None = None
        self.ranges: list[str | None] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            rng = headers.get(b"range")
            self.ranges.append(rng.decode() if rng else None)
            if self.stall_after is not None:
                data = (self.directory / scope["path"].rsplit("/", 1)[-1]).read_bytes()
                start = int(rng.decode().split("=")[1].split("-")[0]) if rng else 0
                await send(
                    {
                        "type": "http.response.start",
                        "status": 206 if rng else 200,
                        "headers": [(b"content-length", str(len(data) - start).encode())],
                    }
                )
                await send(
                    {"type": "http.response.body", "body": data[start : self.stall_after], "more_body": True}
                )
                await asyncio.sleep(3600)
                return
        await self.app(scope, receive, send)


@contextlib.contextmanager
def artifact_server(directory: Path) -> Iterator[tuple[str, StallingApp]]:
    app = FastAPI()
    app.include_router(artifact_router(directory))
    wrapped = StallingApp(app, directory)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(wrapped, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="artifact-server", daemon=True)
    thread.start()
    wait_port(port)
    try:
        yield f"http://127.0.0.1:{port}/artifacts", wrapped
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Release:
    manifest: FirmwareManifest
    signed: SignedDocument
    path: Path


def make_release(
    directory: Path,
    key: SigningKey,
    version: str,
    code: int,
    *,
    size: int = 64 * 1024,
    models: tuple[str, ...] = ("mf-home-1",),
) -> Release:
    data = hashlib.sha256(version.encode()).digest() * (size // 32 + 1)
    data = data[:size]
    name = f"fw-{version}.bin"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)
    manifest = FirmwareManifest(
        version=version,
        version_code=code,
        models=models,
        sha256=hashlib.sha256(data).hexdigest(),
        size=size,
        artifact=name,
        min_battery_pct=20.0,
    )
    return Release(manifest, key.sign(manifest), directory / name)


def trust_file(path: Path, *keys: SigningKey) -> Path:
    path.write_bytes(msgspec.json.encode([k.trusted() for k in keys]))
    return path


async def publish_job(url: str, job: OtaJob) -> None:
    addr = parse_mqtt_url(url)
    async with aiomqtt.Client(addr.host, addr.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(downlink(job.device_id, Downlink.OTA), encode(job), qos=1, retain=True)


def install_job(
    device_id: str, job_id: str, release: Release, base_url: str, action: OtaAction = OtaAction.INSTALL
) -> OtaJob:
    return OtaJob(
        device_id=device_id,
        ts=datetime.now(UTC),
        job_id=job_id,
        rollout_id=1,
        action=action,
        manifest=release.signed if action is OtaAction.INSTALL else None,
        url=f"{base_url}/{release.manifest.artifact}" if action is OtaAction.INSTALL else "",
        deadline=datetime.now(UTC) + timedelta(hours=1),
    )


@dataclass
class Device:
    """Runs an agent and restarts it (a new Agent on the same data folder) whenever the OTA client asks."""

    config: EdgeConfig
    health: Callable[[], Awaitable[str | None]] | None = None
    settings: OtaSettings = FAST
    boots: int = 0
    agent: Agent | None = None
    booted: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            agent = Agent(self.config)
            agent.ota_settings = self.settings
            agent.health_check = self.health
            async with agent:
                self.agent = agent
                self.boots += 1
                self.booted.set()
                await agent.restart_requested.wait()
            self.agent = None


def reports(c: Collector) -> list[OtaReport]:
    """Each report once, in seq order: a message no commit mark covered is sent again (same seq, same
    bytes) after a restart, and the cloud keeps one copy (natural keys)."""
    once = {m.seq: m for m in c.messages() if isinstance(m, OtaReport)}
    return [once[seq] for seq in sorted(once)]


def states(c: Collector, job_id: str) -> list[OtaState]:
    return [r.state for r in reports(c) if r.job_id == job_id]


def final(c: Collector, job_id: str) -> Callable[[], bool]:
    return lambda: any(s in TERMINAL for s in states(c, job_id))


@contextlib.asynccontextmanager
async def running(device: Device) -> AsyncIterator[Device]:
    task = asyncio.create_task(device.run())
    try:
        async with asyncio.timeout(10):
            await device.booted.wait()
        yield device
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
