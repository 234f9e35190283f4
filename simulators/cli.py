"""`microfleet sim`: run a scenario's virtual devices against a broker, with a live summary."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import resource
import signal
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edge.config import DEFAULT_MQTT_URL
from edge.protocols import TrustFileError, load_trust
from simulators.fleet import Fleet, FleetConfig, FleetStats
from simulators.scenario import Scenario, ScenarioError, load_scenario
from simulators.slicing import replica_number, replica_slice

app = typer.Typer(help="Simulated devices.")
console = Console()


# The agents' MQTT protocol level, as `microfleet sim` and `microfleet loadtest` take it.
MqttVersionOption = Annotated[
    str,
    typer.Option(
        envvar="MICROFLEET_EDGE_MQTT_VERSION",
        help="5, or 3.1.1 for the NATS tier's MQTT gateways (docs/decisions/nats-tier.md).",
    ),
]


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard limit (one socket per device). Returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _table(s: FleetStats, title: str) -> Table:
    t = Table(title=f"{title} (simulated {s.sim_time_s / 86_400:.2f} days)")
    for col in (
        "devices",
        "connected",
        "sessions",
        "samples",
        "stored",
        "sent",
        "committed",
        "outbox",
        "dropped",
    ):
        t.add_column(col, justify="right")
    t.add_row(
        f"{s.started}/{s.devices}",
        str(s.connected),
        f"{s.sessions_ended}/{s.sessions_started}",
        str(s.samples),
        str(s.stored),
        str(s.sent),
        str(s.committed),
        str(s.outbox_depth),
        str(s.outbox_dropped),
    )
    return t


def _replica(replicas: int, replica: int | None) -> int:
    if replica is not None:
        return replica
    env = os.environ.get("MICROFLEET_SIM_REPLICA")  # "3", or "sim-3" as deploy/docker/replica-id.sh sets it
    if env:
        digits = re.search(r"(\d+)$", env)
        if digits is None:
            raise typer.BadParameter(f"MICROFLEET_SIM_REPLICA={env!r} does not end in a replica number")
        return int(digits.group(1))
    return replica_number(socket.gethostname()) if replicas > 1 else 1


@app.command("sim")
def sim(
    scenario: Annotated[Path | None, typer.Option(help="Scenario TOML (simulators/scenario.py).")] = None,
    devices: Annotated[int | None, typer.Option(help="Override the scenario's device count.")] = None,
    days: Annotated[float | None, typer.Option(help="Override the scenario's simulated days.")] = None,
    speed: Annotated[float | None, typer.Option(help="0: compressed; 1: real time.")] = None,
    mqtt_url: Annotated[str, typer.Option(envvar="MICROFLEET_MQTT_URL")] = DEFAULT_MQTT_URL,
    data_dir: Annotated[Path, typer.Option(envvar="MICROFLEET_EDGE_DATA_DIR")] = Path(".microfleet-sim"),
    replicas: Annotated[int, typer.Option(envvar="MICROFLEET_SIM_REPLICAS")] = 1,
    replica: Annotated[int | None, typer.Option(help="1..replicas (default: from the host name).")] = None,
    ramp: Annotated[float, typer.Option(help="Agents started per second (0: all at once).")] = 500.0,
    ack: Annotated[
        str,
        typer.Option(
            envvar="MICROFLEET_EDGE_ACK",
            help="committed: outboxes empty on the cloud's commit marks (needs ingest); broker: on PUBACK.",
        ),
    ] = "committed",
    trusted_keys: Annotated[
        Path | None,
        typer.Option(
            envvar="MICROFLEET_EDGE_TRUSTED_KEYS",
            help="JSON of the signing keys every agent trusts (`microfleet keys generate`); default: the "
            "scenario's `trusted_keys`. Without one, signed protocols and firmware are rejected.",
        ),
    ] = None,
    mqtt_version: MqttVersionOption = "5",
    id_prefix: Annotated[
        str | None,
        typer.Option(help="Device ids <prefix>-00001...: override the scenario's (two fleets side by side)."),
    ] = None,
    load: Annotated[
        bool,
        typer.Option(
            help="Load: every device in sessions back to back from now in real time (device time is wall "
            "time, so latency means something) until SIGTERM.",
        ),
    ] = False,
) -> None:
    """Run the scenario's devices (this replica's slice) and print what they did. SIGTERM ends the open
    sessions and waits (up to 60 s) for the outboxes to drain; exit 1 if anything is left in them."""
    try:
        sc = load_scenario(scenario) if scenario else Scenario()
        sc = Scenario(
            **{
                **{f: getattr(sc, f) for f in sc.__dataclass_fields__},
                **({"devices": devices} if devices else {}),
                **({"days": days} if days is not None else {}),
                **({"speed": speed} if speed is not None else {}),
                **({"id_prefix": id_prefix} if id_prefix else {}),
            }
        )
        if load:
            sc = dataclasses.replace(sc, start=datetime.now(UTC), speed=1.0)
        part = replica_slice(sc.devices, replicas, _replica(replicas, replica))
    except (ScenarioError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    soft, _ = raise_fd_limit()
    if soft < len(part) + 100:
        console.print(f"[yellow]open-files limit {soft} is below {len(part)} devices: raise `ulimit -n`[/]")
    if ack not in ("committed", "broker"):
        raise typer.BadParameter(f"--ack must be committed or broker, got {ack!r}")
    if mqtt_version not in ("5", "3.1.1"):
        raise typer.BadParameter(f"--mqtt-version must be 5 or 3.1.1, got {mqtt_version!r}")
    config = FleetConfig(
        sc,
        mqtt_url,
        data_dir,
        device_range=part,
        extra={"ack_mode": ack, "mqtt_version": mqtt_version},
        trusted_keys_file=trusted_keys,
    )
    if config.trusted_keys is None:
        console.print("[yellow]no trusted keys: the agents reject every signed protocol and firmware[/]")
    else:
        try:
            n = len(load_trust(config.trusted_keys).key_ids)
        except TrustFileError as exc:
            raise typer.BadParameter(str(exc)) from None
        console.print(f"agents trust {n} key(s) from {config.trusted_keys}")
    final = asyncio.run(_run(config, ramp, load))
    if final.outbox_depth:
        console.print(
            f"[yellow]{final.outbox_depth} messages still in outboxes under {data_dir}: is the broker "
            f"at {mqtt_url} reachable, and (--ack committed) is ingest running to commit them? They are "
            "sent again on the next run.[/yellow]"
        )
        raise typer.Exit(1)


async def _run(config: FleetConfig, ramp: float, load: bool = False) -> FleetStats:
    title = f"microfleet sim {config.scenario.name} devices {config.indices.start}..{config.indices.stop - 1}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)  # `docker stop`: end the sessions, drain, exit
    try:
        async with Fleet(config) as fleet:
            with Live(_table(fleet.stats(), title), console=console, refresh_per_second=2) as live:
                work = asyncio.create_task(_work(fleet, ramp, load, stop))
                while not work.done():
                    live.update(_table(fleet.stats(), title))
                    await asyncio.wait({work}, timeout=0.5)
                await work
                live.update(_table(fleet.stats(), title))
            return fleet.stats()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _work(fleet: Fleet, ramp: float, load: bool, stop: asyncio.Event) -> None:
    await fleet.connect(ramp, wait_s=None)
    users = asyncio.create_task(fleet.live(days=365, continuous=True) if load else fleet.live())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({users, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not users.done():  # SIGTERM: open sessions end (run_user), then the outboxes drain
        users.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await users
    else:
        users.result()
    try:
        async with asyncio.timeout(60):
            await fleet.drained()
    except TimeoutError:
        pass
