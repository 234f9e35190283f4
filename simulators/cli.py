"""`microfleet sim`: run a fleet of virtual devices against a broker, with a live summary."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edge.config import DEFAULT_MQTT_URL
from simulators.fleet import Fleet, FleetConfig, FleetStats
from simulators.persona import PERSONAS

app = typer.Typer(help="Simulated devices.")
console = Console()


def _table(s: FleetStats, speed: float) -> Table:
    t = Table(title=f"microfleet sim (x{speed:g}, simulated {s.sim_elapsed_s / 3600:.2f} h)")
    for col in ("devices", "connected", "sessions", "stored", "published", "outbox", "dropped"):
        t.add_column(col, justify="right")
    t.add_row(
        str(s.devices),
        str(s.connected),
        f"{s.sessions_ended}/{s.sessions_started}",
        str(s.stored),
        str(s.published),
        str(s.outbox_depth),
        str(s.outbox_dropped),
    )
    return t


@app.command("sim")
def sim(
    devices: Annotated[int, typer.Option(help="Number of virtual devices.")] = 10,
    mqtt_url: Annotated[str, typer.Option(envvar="MICROFLEET_MQTT_URL")] = DEFAULT_MQTT_URL,
    duration: Annotated[float, typer.Option(help="Real seconds to run.")] = 60.0,
    speed: Annotated[float, typer.Option(help="Simulated seconds per real second.")] = 60.0,
    seed: Annotated[int, typer.Option()] = 0,
    data_dir: Annotated[Path, typer.Option(help="Outboxes go under DATA_DIR/<device_id>/.")] = Path(
        ".microfleet-sim"
    ),
    persona: Annotated[
        list[str] | None, typer.Option(help=f"Persona mix (repeat): {', '.join(PERSONAS)}.")
    ] = None,
    id_prefix: Annotated[str, typer.Option()] = "sim",
) -> None:
    """Run DEVICES real edge agents in one process for DURATION seconds and print what they did."""
    try:
        config = FleetConfig(
            mqtt_url=mqtt_url,
            data_dir=data_dir,
            devices=devices,
            speed=speed,
            seed=seed,
            id_prefix=id_prefix,
            personas=tuple(persona) if persona else tuple(PERSONAS),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    final = asyncio.run(_run(config, duration))  # the live table stays on screen with the final figures
    if final.outbox_depth:
        console.print(
            f"[yellow]{final.outbox_depth} messages still in outboxes under {data_dir}: is the broker "
            f"at {mqtt_url} reachable? They are sent on the next run.[/yellow]"
        )
        raise typer.Exit(1)


async def _run(config: FleetConfig, duration: float) -> FleetStats:
    os.makedirs(config.data_dir, exist_ok=True)
    async with Fleet(config) as fleet:
        with Live(_table(fleet.stats(), config.speed), console=console, refresh_per_second=2) as live:
            run = asyncio.create_task(fleet.run(duration, drain=False))
            while not run.done():
                live.update(_table(fleet.stats(), config.speed))
                await asyncio.wait({run}, timeout=0.5)
            await run
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(config.drain_timeout_s):
                    await fleet.drained()
            live.update(_table(fleet.stats(), config.speed))
        return fleet.stats()
