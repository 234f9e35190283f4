"""`microfleet demo`: the whole platform on one machine, with a live summary.

It starts a private mosquitto from deploy/mosquitto/mosquitto.conf (unless MICROFLEET_MQTT_URL points at a
broker), migrates the database named by MICROFLEET_DATABASE_URL (default: the local PostgreSQL, database
`microfleet`, created if missing), runs the ingest service in this process, and drives a fleet of simulated
devices (the real edge agent with personas, on a sped-up clock). At the end every message the devices
stored must be in the database exactly once, or the demo exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

console = Console()
POLL_S = 1.0


@dataclass
class DbCounts:
    messages: int = 0
    samples: int = 0
    sessions: int = 0
    sessions_ended: int = 0
    devices_online: int = 0
    quarantined: int = 0
    alerts: int = 0


@contextlib.contextmanager
def _broker(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from cli.localbroker import Mosquitto

    broker = Mosquitto()
    broker.start()
    try:
        yield broker.url
    finally:
        broker.close()


def _counts(conn: Any, prefix: str) -> DbCounts:
    like = prefix + "-%"
    q = conn.execute
    c = DbCounts()
    c.messages = q(
        "SELECT count(*) FROM uplink_log WHERE device_id LIKE %s AND kind <> 'status'", (like,)
    ).fetchone()[0]
    c.samples = q("SELECT count(*) FROM samples WHERE device_id LIKE %s", (like,)).fetchone()[0]
    c.sessions, c.sessions_ended = q(
        "SELECT count(*), count(ended_at) FROM sessions WHERE device_id LIKE %s", (like,)
    ).fetchone()
    c.devices_online = q(
        "SELECT count(*) FROM devices WHERE device_id LIKE %s AND state = 'online'", (like,)
    ).fetchone()[0]
    c.quarantined = q("SELECT count(*) FROM quarantine WHERE topic LIKE %s", (f"mf/v1/{like}",)).fetchone()[0]
    if q("SELECT to_regclass('alerts') IS NOT NULL").fetchone()[0]:
        c.alerts = q("SELECT count(*) FROM alerts WHERE device_id LIKE %s", (like,)).fetchone()[0]
    return c


def _view(fleet: Any, db: DbCounts, ingest_line: str, started: float, days: float) -> Group:
    s = fleet.stats()
    elapsed = time.monotonic() - started
    t = Table(title="microfleet demo", show_header=True, expand=False)
    for col in ("", "devices (edge)", "cloud (database)"):
        t.add_column(col, justify="right" if col else "left")
    t.add_row("devices connected / online", f"{s.connected} / {s.devices}", f"{db.devices_online}")
    t.add_row("samples recorded on devices", f"{s.samples}", "")
    t.add_row(
        "sessions started / ended",
        f"{s.sessions_started} / {s.sessions_ended}",
        f"{db.sessions} / {db.sessions_ended}",
    )
    t.add_row("messages stored on device / in DB", f"{s.stored}", f"{db.messages}")
    t.add_row("samples in DB", "", f"{db.samples}")
    t.add_row("messages sent / committed by the cloud", f"{s.sent} / {s.committed}", "")
    t.add_row("outbox depth (not yet committed)", f"{s.outbox_depth}", "")
    t.add_row("quarantined / alerts", "", f"{db.quarantined} / {db.alerts}")
    done = s.sim_time_s / 86400
    footer = f"real {elapsed:5.1f} s   simulated day {done:4.1f} of {days:g}   ingest: {ingest_line}"
    return Group(t, Panel(footer, expand=False))


async def _drive(fleet: Any, conn: Any, prefix: str, ingest: Any, days: float) -> DbCounts:
    started = time.monotonic()
    db = DbCounts()
    with Live(_view(fleet, db, "", started, days), console=console, refresh_per_second=4) as live:

        async def lifetime() -> None:
            await fleet.connect(ramp_per_s=200)
            await fleet.live()
            async with asyncio.timeout(120):
                await fleet.drained()

        run = asyncio.create_task(lifetime(), name="demo-fleet")
        try:
            while not run.done():
                db = await asyncio.to_thread(_counts, conn, prefix)
                live.update(_view(fleet, db, ingest.stats.line(), started, days))
                await asyncio.wait({run}, timeout=POLL_S)
            await run
            # every outbox is empty: the cloud's commit marks covered everything; wait until the counts show it
            expected = fleet.stats().stored
            deadline = time.monotonic() + 60
            while db.messages < expected and time.monotonic() < deadline:
                db = await asyncio.to_thread(_counts, conn, prefix)
                live.update(_view(fleet, db, ingest.stats.line(), started, days))
                await asyncio.sleep(POLL_S / 4)
        finally:
            if not run.done():
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
    return db


def demo(
    devices: Annotated[int, typer.Option(help="simulated devices (each a real edge agent)")] = 300,
    days: Annotated[float, typer.Option(help="simulated days of use, ending now, compressed")] = 7.0,
    seed: Annotated[int, typer.Option()] = 1,
) -> None:
    """Run the platform (broker, ingest, alerts, database) and a simulated fleet, with a live summary."""
    import psycopg

    from cloud.alerts.config import AlertConfig
    from cloud.alerts.service import AlertService
    from cloud.config import CloudConfig
    from cloud.db.migrate import migrate
    from cloud.db.pool import DatabaseUnreachable, describe, ensure_database
    from cloud.ingest.service import IngestService
    from simulators.fleet import Fleet, FleetConfig
    from simulators.scenario import Scenario

    config = CloudConfig.from_env()
    prefix = "demo" + datetime.now(UTC).strftime("%H%M%S")
    try:
        ensure_database(config.database_url)
        applied = migrate(config.database_url)
    except (DatabaseUnreachable, psycopg.OperationalError) as exc:
        console.print(
            f"[red]cannot reach the database {describe(config.database_url)}: {exc}[/]\n"
            "Start PostgreSQL (`make services`) or set MICROFLEET_DATABASE_URL."
        )
        raise typer.Exit(2) from None
    console.print(f"database {describe(config.database_url)} ready ({len(applied)} migration(s) applied now)")
    with _broker(os.environ.get("MICROFLEET_MQTT_URL")) as mqtt_url, tempfile.TemporaryDirectory() as tmp:
        console.print(f"broker {mqtt_url}; {devices} devices '{prefix}-*' living {days:g} days, compressed")
        cloud = CloudConfig.from_env(mqtt_url=mqtt_url, consumer_id=f"{prefix}-ingest")
        ingest = IngestService(cloud, stats_interval_s=3600)
        alerts = AlertService(AlertConfig.from_env(cloud, consumer_id=f"{prefix}-alerts"))
        ingest.start()
        alerts.start()
        try:
            scenario = Scenario(
                name="demo",
                seed=seed,
                devices=devices,
                days=days,
                speed=0.0,
                id_prefix=prefix,
                samples_per_batch=30,
            )
            fleet_config = FleetConfig(scenario, mqtt_url, Path(tmp))
            with psycopg.connect(config.database_url, autocommit=True) as conn:

                async def main() -> tuple[DbCounts, Any]:
                    async with Fleet(fleet_config) as fleet:
                        return await _drive(fleet, conn, prefix, ingest, days), fleet.stats()

                db, stats = asyncio.run(main())
                time.sleep(2)  # the alert engine reads the same messages: let it catch up for the tally
                db = _counts(conn, prefix)
        finally:
            alerts.stop()
            ingest.stop()
    loss = stats.stored - db.messages
    summary = Table(title="result", show_header=False)
    summary.add_row("devices", str(stats.devices))
    summary.add_row("simulated days", f"{stats.sim_time_s / 86400:.1f}")
    summary.add_row("sessions", f"{db.sessions} ({db.sessions_ended} ended)")
    summary.add_row("messages stored by devices", str(stats.stored))
    summary.add_row("messages committed in the database", str(db.messages))
    summary.add_row("samples committed", str(db.samples))
    summary.add_row("alerts raised", str(db.alerts))
    summary.add_row("loss", f"[{'red' if loss else 'green'}]{loss}[/]")
    console.print(summary)
    if loss:
        console.print("[red]some messages did not reach the database: see the ingest log above[/]")
        raise typer.Exit(1)
    console.print(
        f"[green]every message is in the database exactly once[/] (devices '{prefix}-*'); "
        "explore with `microfleet db status` or the API (`microfleet api serve`)."
    )
