"""`microfleet edge ...`: run one agent with the demo sensor, or inspect an outbox."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Annotated

import typer

from contract.messages import EndReason
from edge.app import Agent
from edge.clock import ScaledClock, SystemClock
from edge.config import ConfigError, EdgeConfig
from edge.outbox import OutboxError, inspect
from edge.sensor import DemoSensor

app = typer.Typer(help="The edge agent (runs on a device or its hub).", no_args_is_help=True)


@app.command("run")
def run(
    device_id: Annotated[str | None, typer.Option(envvar="MICROFLEET_DEVICE_ID")] = None,
    mqtt_url: Annotated[str | None, typer.Option()] = None,
    data_dir: Annotated[Path | None, typer.Option()] = None,
    sessions: Annotated[int, typer.Option(help="Sessions to record with the demo sensor.")] = 1,
    session_s: Annotated[int, typer.Option(help="Length of each session, simulated seconds.")] = 60,
    level: Annotated[int, typer.Option(min=1, max=5)] = 3,
    speed: Annotated[float, typer.Option(help="Simulated seconds per real second (1 = real time).")] = 1.0,
    drain_timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker at the end.")] = 30.0,
) -> None:
    """Record SESSIONS demo sessions, publish them, wait until the broker has acknowledged them all.

    What the broker did not acknowledge stays in the outbox and is sent on the next run."""
    try:
        config = EdgeConfig.from_env(device_id=device_id, mqtt_url=mqtt_url, data_dir=data_dir)
    except (ConfigError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    left = asyncio.run(_run(config, sessions, session_s, level, speed, drain_timeout))
    typer.echo(json.dumps({"device_id": config.device_id, "outbox_depth": left}))
    if left:
        typer.echo(
            f"{left} messages are still in {config.outbox_path}: is the broker at {config.mqtt_url} up?",
            err=True,
        )
        raise typer.Exit(1)


async def _run(
    config: EdgeConfig, sessions: int, session_s: int, level: int, speed: float, drain_timeout_s: float
) -> int:
    clock = SystemClock() if speed == 1 else ScaledClock(speed)
    sensor = DemoSensor()
    async with Agent(config, clock=clock) as agent:
        for _ in range(sessions):
            agent.start_session(level)
            t0 = clock.monotonic()
            for second in range(1, session_s + 1):
                await clock.sleep(t0 + second - clock.monotonic())
                agent.record(sensor.read(clock.now(), level))
            agent.end_session(EndReason.AUTO_TIMER)
        try:
            async with asyncio.timeout(drain_timeout_s):
                await agent.drained()
        except TimeoutError:
            pass
        return agent.outbox.depth


@app.command("serve")
def serve(
    device_id: Annotated[str | None, typer.Option(envvar="MICROFLEET_DEVICE_ID")] = None,
    mqtt_url: Annotated[str | None, typer.Option()] = None,
    data_dir: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Run the agent until SIGTERM/SIGINT: connected, applying protocols and firmware updates.

    A firmware install ends in a "reboot": the agent leaves and comes back up from its boot record (the
    A/B slot to try, or the one to roll back to), exactly as a device restarting would."""
    try:
        config = EdgeConfig.from_env(device_id=device_id, mqtt_url=mqtt_url, data_dir=data_dir)
    except (ConfigError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    restarts = asyncio.run(_serve(config))
    typer.echo(json.dumps({"device_id": config.device_id, "restarts": restarts}))


async def _serve(config: EdgeConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    restarts = 0
    while not stop.is_set():
        async with Agent(config) as agent:
            waiters = {
                asyncio.create_task(stop.wait(), name="serve-stop"),
                asyncio.create_task(agent.restart_requested.wait(), name="serve-restart"),
            }
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waiters:
                    task.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
        if not stop.is_set():
            restarts += 1
    return restarts


@app.command("outbox")
def outbox(
    data_dir: Annotated[Path, typer.Option(envvar="MICROFLEET_EDGE_DATA_DIR")] = Path("./.microfleet-edge"),
) -> None:
    """Print an outbox's depth, size, next seq and dropped counts as JSON."""
    try:
        s = inspect(data_dir / "outbox.sqlite3")
    except OutboxError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(
        json.dumps(
            {
                "depth": s.depth,
                "bytes": s.size_bytes,
                "next_seq": s.next_seq,
                "dropped": s.dropped,
                "dropped_by_kind": s.dropped_by_kind,
            }
        )
    )
