"""`microfleet demo`: the whole platform on one machine, with a live summary.

It starts a private mosquitto from deploy/mosquitto/mosquitto.conf (unless MICROFLEET_MQTT_URL points at a
broker), migrates the database named by MICROFLEET_DATABASE_URL (default: the local PostgreSQL, database
`microfleet`, created if missing), runs the ingest service in this process, and drives a fleet of simulated
devices (the real edge agent with personas, on a sped-up clock). At the end every message the devices
stored must be in the database exactly once, or the demo exits non-zero.

Time budget (`--budget`, 120 s by default): the fleet lives its days compressed as fast as the machine
allows and is stopped early (at the simulated day it reached; open sessions end) when the budget's living
part is spent, or sooner when what the devices still hold would not be committed in time at the rate the
cloud commits (`DemoBudget`, pure). Then the outboxes drain (the in-process ingest sends its commit marks
after MICROFLEET_MARK_DELAY_S, 1 s here unless set) and the exactly-once check runs on what was sent. A
slow 2-core machine simulates fewer days; both end in about two minutes. Not on a terminal (CI, a pipe),
the live table becomes a plain progress line every few seconds.
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
PROGRESS_EVERY_S = 5.0  # plain progress lines when stdout is not a terminal
DEMO_MARK_DELAY_S = 1.0
DEMO_BUDGET_S = 120.0  # `make demo` ends in about two minutes on a 2-core machine, slow or fast
DRAIN_S = 25.0


@dataclass(frozen=True, slots=True)
class DemoBudget:
    """Pure: when the fleet must stop living for the whole demo to end within `total_s`."""

    total_s: float = DEMO_BUDGET_S
    drain_s: float = DRAIN_S  # kept at the end: the last commits, their marks, the alert engine, the check
    min_live_s: float = 5.0  # the fleet lives at least this long, whatever the budget

    def __post_init__(self) -> None:
        if self.total_s < self.drain_s + self.min_live_s:
            raise ValueError(
                f"a budget of {self.total_s:g} s is too short: give at least "
                f"{self.drain_s + self.min_live_s:g} s"
            )

    @classmethod
    def of(cls, total_s: float) -> DemoBudget:
        """The plan for a budget: a quarter of a short budget, at most 25 s, is kept for the drain."""
        return cls(total_s=total_s, drain_s=min(DRAIN_S, total_s / 4))

    @property
    def live_s(self) -> float:
        """Seconds after the start by which the fleet stops living, at the latest."""
        return self.total_s - self.drain_s

    def stop_living(self, elapsed_s: float, living_s: float, backlog: int, commit_rate: float) -> bool:
        """Stop now? `elapsed_s` since the demo started, `living_s` since the fleet began to live,
        `backlog` messages the devices still hold, `commit_rate` messages/s the cloud commits lately."""
        if living_s < self.min_live_s:
            return False
        if elapsed_s >= self.live_s:
            return True
        catch_up_s = backlog / max(commit_rate, 50.0)  # what the cloud needs for what the devices hold
        return elapsed_s + catch_up_s >= self.live_s


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


@dataclass
class Phase:
    name: str = "connecting"
    stopped_early: bool = False
    living_since: float | None = None


def progress_line(fleet: Any, db: DbCounts, phase: Phase, elapsed_s: float, days: float) -> str:
    """A plain progress line (no terminal: CI logs, pipes)."""
    s = fleet.stats()
    return (
        f"[{elapsed_s:5.0f} s] {phase.name}: day {s.sim_time_s / 86400:4.1f} of {days:g}, "
        f"devices {s.connected}/{s.devices} connected, sessions {s.sessions_started}, "
        f"messages {s.stored} on devices / {db.messages} in DB, outbox {s.outbox_depth}, "
        f"quarantined {db.quarantined}, alerts {db.alerts}"
    )


async def _lifetime(fleet: Any, budget: DemoBudget, started: float, phase: Phase) -> None:
    await fleet.connect(ramp_per_s=200)
    phase.name, phase.living_since = "living", time.monotonic()
    living = asyncio.create_task(fleet.live(), name="demo-live")
    committed, at = fleet.stats().committed, time.monotonic()
    rate = 0.0
    while not living.done():
        await asyncio.wait({living}, timeout=POLL_S)
        s, now = fleet.stats(), time.monotonic()
        if now - at >= POLL_S:
            rate = 0.5 * rate + 0.5 * (s.committed - committed) / (now - at)
            committed, at = s.committed, now
        if not living.done() and budget.stop_living(
            now - started, now - phase.living_since, s.outbox_depth, rate
        ):
            phase.stopped_early = True
            living.cancel()  # every user stops; open sessions end and are recorded
            break
    with contextlib.suppress(asyncio.CancelledError):
        await living
    phase.name = "draining"  # every outbox empties as the cloud's commit marks cover it
    async with asyncio.timeout(max(budget.drain_s, budget.total_s - (time.monotonic() - started)) + 60):
        await fleet.drained()
    phase.name = "checking"


async def _drive(
    fleet: Any, conn: Any, prefix: str, ingest: Any, days: float, budget: DemoBudget, started: float
) -> tuple[DbCounts, Phase]:
    db = DbCounts()
    phase = Phase()
    tty = console.is_terminal
    live = Live(_view(fleet, db, "", started, days), console=console, refresh_per_second=4) if tty else None
    printed = -PROGRESS_EVERY_S  # the first line at once
    shown_phase = ""
    with live if live is not None else contextlib.nullcontext():

        def show(force: bool = False) -> None:
            nonlocal printed, shown_phase
            if live is not None:
                live.update(_view(fleet, db, ingest.stats.line(), started, days))
            elif force or phase.name != shown_phase or time.monotonic() - printed >= PROGRESS_EVERY_S:
                # a line every few seconds, and one at every change of phase (a short phase is seen too)
                printed, shown_phase = time.monotonic(), phase.name
                print(progress_line(fleet, db, phase, printed - started, days), flush=True)

        run = asyncio.create_task(_lifetime(fleet, budget, started, phase), name="demo-fleet")
        try:
            while not run.done():
                db = await asyncio.to_thread(_counts, conn, prefix)
                show()
                await asyncio.wait({run}, timeout=POLL_S)
            await run
            # every outbox is empty: the cloud's commit marks covered everything; wait until the counts show it
            expected = fleet.stats().stored
            deadline = time.monotonic() + 30
            while db.messages < expected and time.monotonic() < deadline:
                db = await asyncio.to_thread(_counts, conn, prefix)
                show()
                await asyncio.sleep(POLL_S / 4)
            show(force=True)
        finally:
            if not run.done():
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
    return db, phase


def demo(
    devices: Annotated[int, typer.Option(help="simulated devices (each a real edge agent)")] = 300,
    days: Annotated[float, typer.Option(help="simulated days of use, ending now, compressed")] = 7.0,
    seed: Annotated[int, typer.Option()] = 1,
    budget: Annotated[
        float,
        typer.Option(
            help="seconds the whole demo may take: the fleet stops at the simulated day it reached in time, "
            "and the exactly-once check runs on what it sent"
        ),
    ] = DEMO_BUDGET_S,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65534,
            help="ingest serves /metrics, /healthz and /readyz on this port and the alert engine on the next "
            "(default MICROFLEET_METRICS_PORT, else any free ports); the URLs are printed at the start",
        ),
    ] = None,
) -> None:
    """Run the platform (broker, ingest, alerts, database) and a simulated fleet, with a live summary."""
    started = time.monotonic()
    try:
        plan = DemoBudget.of(budget)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
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
        console.print(
            f"broker {mqtt_url}; {devices} devices '{prefix}-*' living up to {days:g} days, compressed, "
            f"within {plan.total_s:g} s"
        )
        mark_delay = float(os.environ.get("MICROFLEET_MARK_DELAY_S", DEMO_MARK_DELAY_S))
        cloud = CloudConfig.from_env(
            mqtt_url=mqtt_url, consumer_id=f"{prefix}-ingest", mark_delay_s=mark_delay
        )
        port = metrics_port if metrics_port is not None else (cloud.metrics_port or 0)
        ingest = IngestService(cloud, stats_interval_s=3600, metrics_port=port)
        alerts = AlertService(
            AlertConfig.from_env(cloud, consumer_id=f"{prefix}-alerts"), metrics_port=port and port + 1
        )
        ingest.start()
        alerts.start()
        servers = [(name, svc.metrics_server) for name, svc in (("ingest", ingest), ("alerts", alerts))]
        print(  # one plain line (no wrapping): ops and tests read the URLs from it
            "metrics (curl them while the demo runs): "
            + ", ".join(f"{name} {server.url}/metrics" for name, server in servers if server is not None),
            flush=True,
        )
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

                async def main() -> tuple[DbCounts, Phase, Any]:
                    async with Fleet(fleet_config) as fleet:
                        db, phase = await _drive(fleet, conn, prefix, ingest, days, plan, started)
                        return db, phase, fleet.stats()

                db, phase, stats = asyncio.run(main())
                time.sleep(2)  # the alert engine reads the same messages: let it catch up for the tally
                db = _counts(conn, prefix)
        finally:
            alerts.stop()
            ingest.stop()
    loss = stats.stored - db.messages
    summary = Table(title="result", show_header=False)
    summary.add_row("devices", str(stats.devices))
    cut = " (stopped at the time budget)" if phase.stopped_early else ""
    summary.add_row("simulated days", f"{stats.sim_time_s / 86400:.1f} of {days:g}{cut}")
    summary.add_row("real time", f"{time.monotonic() - started:.0f} s (budget {plan.total_s:g} s)")
    summary.add_row("outbox depth at the end", str(stats.outbox_depth))
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
