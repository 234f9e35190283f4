"""`microfleet loadtest`: ramp simulated devices up, hold a steady load, count what the cloud stored.

Figures (live in the terminal, then a table and a JSON file): connected devices, messages/s and
samples/s sent and stored, loss (per device, every seq the outbox gave out in this run that is not in
`uplink_log`), duplicates (re-sent by the devices; stored twice), end-to-end latency p50/p95/p99/max
(`stored_at - sent_at` of `uplink_log`: the message's device time to the ingest commit), alerts raised
against the alerts the personas expect, CPU and memory of each process. Exit 1 when loss is not zero, or
when `--check-alerts` is given and an expected alert is missing.

Either broker tier (cli/loadtest_tier.py): one mosquitto (MQTT 5), or the MQTT gateways of a NATS cluster
(`--mqtt-version 3.1.1`, the gateways comma-separated in `--mqtt-url`: device i starts at gateway i mod n
and moves to the next after a lost connection). The report names the tier, the protocol level and the
brokers; with `--nats-url` it also reads `$MQTT_msgs` and its durables after the run.

What is counted: the data messages (sessions, samples, events; not the status births, which share the
seq counter) that the devices created in THIS run (seq >= the device's next seq when its outbox opened:
outboxes persist in --data-dir), sent and stored alike. The run is real time and its clock starts now
(the scenario's `start` and `speed` are ignored), so device time is wall time and latency means something.
A figure computed from no message says so: "n/a (no samples)" in the table, null in the JSON with n = 0.

It lives under `cli/` (not `simulators/`) because it reads the cloud's database: `simulators` must not
import `cloud`. Mount: `app.command("loadtest")(cli.loadtest.loadtest)` in cli/main.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import psutil  # type: ignore[import-untyped]
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cli.loadtest_figures import (
    latency_figures,
    latency_since,
    latency_text,
    loss_by_device,
    missing_alerts,
    raised_alerts,
    run_latency,
    stored_data_messages,
    stored_seqs,
)
from cli.loadtest_tier import describe_tier, durable_text, jetstream_state, tier_text
from simulators.cli import MqttVersionOption, raise_fd_limit
from simulators.fleet import Fleet, FleetConfig
from simulators.scenario import Scenario, ScenarioError, load_scenario

if TYPE_CHECKING:
    pass

# the figures' readers stay importable from here (compose-loadtest, bench/sim.py, the tests)
__all__ = [
    "LoadReport",
    "latency_figures",
    "latency_since",
    "latency_text",
    "loadtest",
    "loss_by_device",
    "missing_alerts",
    "raised_alerts",
    "run_loadtest",
    "stored_seqs",
]
console = Console()


@dataclass
class LoadReport:
    devices: int
    connected_max: int
    hold_s: float
    sent_messages: int
    sent_samples: int
    stored_messages: int
    stored_samples: int
    messages_per_s_sent: float
    samples_per_s_sent: float
    messages_per_s_stored: float
    samples_per_s_stored: float
    loss: int
    lost_by_device: dict[str, int]
    duplicates_sent: int
    duplicates_stored: int
    quarantined: int
    latency_ms: dict[str, float | None]  # p50, p95, p99, max (None with no message), n
    alerts_expected: int
    alerts_missing: list[str]
    alerts_raised: dict[str, int]
    processes: list[dict[str, Any]] = field(default_factory=list)
    tier: dict[str, Any] = field(default_factory=dict)  # cli/loadtest_tier.describe_tier
    drained: bool = True  # every outbox emptied by the cloud's commit marks within `settle`
    outbox_left: int = 0  # rows still in the devices' outboxes at the end (no commit mark covered them)
    undrained: list[str] = field(default_factory=list)  # the devices they are on (first 50)

    @property
    def ok(self) -> bool:
        return self.loss == 0


class ProcessWatch:
    """CPU (% of one core, mean over the run) and peak RSS of each watched process."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.procs = {p: psutil.Process(p) for p in pids if psutil.pid_exists(p)}
        self.rss: dict[int, int] = dict.fromkeys(self.procs, 0)
        self.cpu0 = {p: sum(pr.cpu_times()[:2]) for p, pr in self.procs.items()}
        self.t0 = time.monotonic()

    def sample(self) -> None:
        for p, pr in self.procs.items():
            with contextlib.suppress(psutil.Error):
                self.rss[p] = max(self.rss[p], pr.memory_info().rss)

    def report(self) -> list[dict[str, Any]]:
        dt = max(1e-6, time.monotonic() - self.t0)
        out = []
        for p, pr in self.procs.items():
            try:
                cpu = sum(pr.cpu_times()[:2]) - self.cpu0[p]
                name = " ".join(pr.cmdline()[:3])[:60] or pr.name()
            except psutil.Error:
                continue
            out.append(
                {"pid": p, "name": name, "cpu_pct": round(100 * cpu / dt, 1), "rss_mb": self.rss[p] / 2**20}
            )
        return out


def _live_table(fleet: Fleet, stored: int, phase: str, t: float) -> Table:
    s = fleet.stats()
    table = Table(title=f"microfleet loadtest: {phase} ({t:.0f} s)")
    for col in ("devices", "connected", "sessions", "samples sent", "msgs sent", "msgs stored", "outbox"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{s.started}/{s.devices}",
        str(s.connected),
        str(s.sessions_started),
        str(s.samples),
        str(s.stored),
        str(stored),
        str(s.outbox_depth),
    )
    return table


async def run_loadtest(
    scenario: Scenario,
    *,
    mqtt_url: str,
    database_url: str,
    data_dir: Path,
    ramp_per_s: float,
    hold_s: float,
    settle_s: float = 30.0,
    watch_pids: Sequence[int] = (),
    clock_skew_s: dict[int, float] | None = None,
    live: bool = True,
    mqtt_version: str = "5",
    nats_url: str | None = None,
) -> LoadReport:
    import psycopg  # the load test reads the database; the device image (.[sim]) has no driver

    prefix = scenario.id_prefix
    # real time from now: device time is wall time (a scenario's start in the past made every latency
    # a day long, and the old filter on sent_at then dropped every message)
    scenario = dataclasses.replace(scenario, start=datetime.now(UTC), speed=1.0)
    config = FleetConfig(
        scenario,
        mqtt_url,
        data_dir,
        clock_skew_s=clock_skew_s or {},
        extra={"mqtt_version": mqtt_version},
        spread_brokers=True,
    )
    tier = describe_tier(mqtt_url, mqtt_version, nats_url)
    watch = ProcessWatch([psutil.Process().pid, *watch_pids])
    with psycopg.connect(database_url, autocommit=True) as conn:
        q0 = int(conn.execute("select count(*) from quarantine").fetchone()[0])  # type: ignore[index]
        async with Fleet(config) as fleet:
            t0 = time.monotonic()
            phase = ["ramp"]
            connected_max = [0]
            drained = [True]

            async def drive() -> None:
                await fleet.connect(ramp_per_s, wait_s=120)
                phase[0] = "hold"
                users = asyncio.create_task(fleet.live(days=365, continuous=True))
                await asyncio.sleep(hold_s)
                users.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await users
                phase[0] = "drain"
                try:
                    async with asyncio.timeout(settle_s):
                        await fleet.drained()
                except TimeoutError:  # not committed in time: the report counts what is lost
                    drained[0] = False

            work = asyncio.create_task(drive())
            stored = 0
            with Live(console=console, refresh_per_second=2, transient=not live) as screen:
                while not work.done():
                    await asyncio.wait({work}, timeout=1.0)
                    watch.sample()
                    connected_max[0] = max(connected_max[0], fleet.stats().connected)
                    stored = stored_data_messages(conn, fleet.first_seqs)
                    screen.update(_live_table(fleet, stored, phase[0], time.monotonic() - t0))
            await work
            held = time.monotonic() - t0
            expected_next = fleet.next_seqs()
            stats = fleet.stats()
            undrained = sorted(a.config.device_id for a in fleet.agents if a.outbox.depth)
            expected_alerts = {d: p.expected for d, p in fleet.personas.items()}
            # wait (bounded) until the cloud has committed everything the broker acknowledged
            deadline = time.monotonic() + settle_s
            first = dict(fleet.first_seqs)
            while True:
                seqs, dup_rows = stored_seqs(conn, prefix)
                lost = loss_by_device(expected_next, seqs, first)
                if not lost or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        q1 = int(conn.execute("select count(*) from quarantine").fetchone()[0])  # type: ignore[index]
        samples_stored = conn.execute(
            "select count(*) from samples where device_id like %s", (prefix + "-%",)
        ).fetchone()
        latency = run_latency(conn, first)
        stored_msgs = stored_data_messages(conn, first)
        raised = raised_alerts(conn, prefix)
    if nats_url:
        tier["jetstream"] = await jetstream_state(nats_url, settle_s=min(settle_s, 10.0))
    n_samples = int(samples_stored[0]) if samples_stored else 0
    return LoadReport(
        devices=scenario.devices,
        connected_max=connected_max[0],
        hold_s=round(held, 1),
        sent_messages=stats.stored,
        sent_samples=stats.samples,
        stored_messages=stored_msgs,
        stored_samples=n_samples,
        messages_per_s_sent=round(stats.stored / held, 1),
        samples_per_s_sent=round(stats.samples / held, 1),
        messages_per_s_stored=round(stored_msgs / held, 1),
        samples_per_s_stored=round(n_samples / held, 1),
        loss=sum(lost.values()),
        lost_by_device=dict(sorted(lost.items())[:50]),
        duplicates_sent=max(0, stats.sent - stats.stored),
        duplicates_stored=dup_rows,
        quarantined=q1 - q0,
        latency_ms=latency,
        alerts_expected=sum(len(v) for v in expected_alerts.values()),
        alerts_missing=missing_alerts(expected_alerts, raised),
        alerts_raised={r: sum(r in v for v in raised.values()) for r in sorted(set().union(*raised.values()))}
        if raised
        else {},
        processes=watch.report(),
        tier=tier,
        drained=drained[0],
        outbox_left=stats.outbox_depth,
        undrained=undrained[:50],
    )


def report_table(r: LoadReport) -> Table:
    t = Table(title="microfleet loadtest: result")
    t.add_column("figure")
    t.add_column("value", justify="right")
    rows = [
        ("tier", tier_text(r.tier)) if r.tier else ("tier", "-"),
        ("devices / connected (max)", f"{r.devices} / {r.connected_max}"),
        ("messages sent / stored", f"{r.sent_messages} / {r.stored_messages}"),
        ("samples sent / stored", f"{r.sent_samples} / {r.stored_samples}"),
        ("messages/s sent / stored", f"{r.messages_per_s_sent} / {r.messages_per_s_stored}"),
        ("samples/s sent / stored", f"{r.samples_per_s_sent} / {r.samples_per_s_stored}"),
        ("loss (by seq)", f"[{'green' if r.loss == 0 else 'red'}]{r.loss}[/]"),
        ("duplicates re-sent / stored twice", f"{r.duplicates_sent} / {r.duplicates_stored}"),
        ("quarantined", str(r.quarantined)),
        ("latency ms p50 / p95 / p99 / max", latency_text(r.latency_ms)),
        ("alerts raised (rule: devices)", ", ".join(f"{k}:{v}" for k, v in r.alerts_raised.items()) or "-"),
        ("expected alerts missing", f"{len(r.alerts_missing)} of {r.alerts_expected}"),
    ]
    durables = (r.tier.get("jetstream") or {}).get("durables") or {}
    rows += [(f"durable {name}", durable_text(name, d)) for name, d in durables.items()]
    some = ", ".join(r.undrained[:5]) + (" ..." if len(r.undrained) > 5 else "")
    drained = "yes" if r.drained else f"[red]no: {r.outbox_left} rows left on {some}[/]"
    rows.append(("outboxes drained (committed)", drained))
    rows += [
        (f"process {p['pid']} {p['name']}", f"{p['cpu_pct']} % cpu, {p['rss_mb']:.0f} MB")
        for p in r.processes
    ]
    for k, v in rows:
        t.add_row(k, v)
    return t


def loadtest(
    mqtt_url: Annotated[
        str,
        typer.Option(
            envvar="MICROFLEET_MQTT_URL",
            help="The broker, or the NATS cluster's MQTT gateways comma-separated (devices spread over them).",
        ),
    ] = "mqtt://127.0.0.1:1883",
    mqtt_version: MqttVersionOption = "5",
    nats_url: Annotated[
        str | None,
        typer.Option(
            envvar="MICROFLEET_NATS_URL",
            help="The NATS tier: after the run, report `$MQTT_msgs` and its durables (pending, unacked).",
        ),
    ] = None,
    database_url: Annotated[
        str, typer.Option(envvar="MICROFLEET_DATABASE_URL")
    ] = "postgresql://postgres@127.0.0.1:5432/microfleet",
    scenario: Annotated[
        Path | None, typer.Option(help="Scenario TOML: persona mix, seed, id prefix.")
    ] = None,
    devices: Annotated[int, typer.Option()] = 100,
    ramp: Annotated[float, typer.Option(help="Devices started per second.")] = 100.0,
    hold: Annotated[float, typer.Option(help="Seconds of steady load after the ramp.")] = 30.0,
    settle: Annotated[float, typer.Option(help="Seconds allowed to drain and commit.")] = 60.0,
    data_dir: Annotated[Path, typer.Option()] = Path(".microfleet-loadtest"),
    out: Annotated[Path, typer.Option(help="JSON report.")] = Path("loadtest.json"),
    pid: Annotated[
        list[int] | None, typer.Option(help="Also watch this process (broker, ingest...).")
    ] = None,
    check_alerts: Annotated[bool, typer.Option(help="Fail when an expected alert is missing.")] = False,
) -> None:
    """Ramp DEVICES simulated devices up at RAMP/s, hold for HOLD s, report; exit 1 on loss."""
    if mqtt_version not in ("5", "3.1.1"):
        raise typer.BadParameter(f"--mqtt-version must be 5 or 3.1.1, got {mqtt_version!r}")
    try:
        sc = load_scenario(scenario) if scenario else Scenario(id_prefix="load")
    except ScenarioError as exc:
        raise typer.BadParameter(str(exc)) from None
    sc = Scenario(
        **{**{f: getattr(sc, f) for f in sc.__dataclass_fields__}, "devices": devices, "speed": 1.0}
    )
    raise_fd_limit()
    report = asyncio.run(
        run_loadtest(
            sc,
            mqtt_url=mqtt_url,
            database_url=database_url,
            data_dir=data_dir,
            ramp_per_s=ramp,
            hold_s=hold,
            settle_s=settle,
            watch_pids=pid or (),
            mqtt_version=mqtt_version,
            nats_url=nats_url,
        )
    )
    console.print(report_table(report))
    out.write_text(json.dumps(asdict(report), indent=2, default=str))
    console.print(f"report written to {out}")
    if not report.drained:  # stored, but the devices were not told: their outboxes hold it (and re-send)
        console.print(
            f"[yellow]{report.outbox_left} rows still in the outboxes of "
            f"{len(report.undrained)}{'+' if len(report.undrained) >= 50 else ''} devices "
            f"after --settle: stored (loss counts what is not), but no commit mark reached them[/]"
        )
    if report.loss:
        console.print(f"[red]FAIL: {report.loss} messages lost (by seq); see lost_by_device in {out}[/]")
        raise typer.Exit(1)
    if check_alerts and report.alerts_missing:
        console.print(
            f"[red]FAIL: {len(report.alerts_missing)} expected alerts missing, e.g. {report.alerts_missing[:5]}[/]"
        )
        raise typer.Exit(1)
