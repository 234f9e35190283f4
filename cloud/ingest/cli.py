"""`microfleet ingest`: run one ingest consumer, or N processes sharing the load (ids <prefix>-1..N)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import Annotated

import typer

from cloud.runtime import service_cli
from cloud.runtime.service_cli import MetricsPort

app = typer.Typer(no_args_is_help=True)
log = logging.getLogger(__name__)


RESTART_MIN_S = 1.0  # a child that died is started again after this, doubling while it keeps dying
RESTART_MAX_S = 30.0
STABLE_S = 60.0  # a child that ran this long before dying starts again after RESTART_MIN_S


def restart_delay(previous_s: float | None, ran_s: float) -> float:
    """Pure: how long to wait before starting a child again that died after running `ran_s` seconds."""
    if previous_s is None or ran_s >= STABLE_S:
        return RESTART_MIN_S
    return min(previous_s * 2, RESTART_MAX_S)


def _run_many(processes: int, prefix: str, args: list[str], metrics_port: int | None) -> None:
    """Run N consumer processes and supervise them: a child that dies (a crash, a worker thread's death:
    exit code 70) is started again with the same consumer id, so it takes back its broker session and
    what the broker kept for it. SIGTERM/SIGINT go to every child, which then leave the group cleanly."""

    def command(i: int) -> list[str]:
        return (
            [sys.executable, "-m", "cloud.ingest", "--consumer-id", f"{prefix}-{i}", *args]
            + ([] if i == 1 else ["--no-housekeeping"])
            # each child its own metrics port: the base port, +1, +2 ... (0: each any free port)
            + ([] if metrics_port is None else ["--metrics-port", str(metrics_port and metrics_port + i - 1)])
        )

    children = {i: subprocess.Popen(command(i)) for i in range(1, processes + 1)}
    started = {i: time.monotonic() for i in children}
    delays: dict[int, float | None] = dict.fromkeys(children)
    due: dict[int, float] = {}  # child -> monotonic time to start it again
    stop = threading.Event()

    def forward(signum: int, _frame: object) -> None:
        stop.set()
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, forward)
    while not stop.wait(0.2):
        now = time.monotonic()
        for i, child in children.items():
            code = child.poll()
            if code is not None and i not in due:
                delay = restart_delay(delays[i], now - started[i])
                delays[i], due[i] = delay, now + delay
                log.warning(
                    "%s-%d exited with code %d; starting it again in %.0f s (same consumer id)",
                    prefix,
                    i,
                    code,
                    delay,
                )
        for i, when in list(due.items()):
            if now >= when and not stop.is_set():
                del due[i]
                children[i] = subprocess.Popen(command(i))
                started[i] = time.monotonic()
    codes = [child.wait() for child in children.values()]
    if any(codes):
        log.info("consumers stopped with codes %s", codes)


@app.command()
def ingest(
    consumer_id: Annotated[
        str | None,
        typer.Option(help="Stable id of this consumer (its broker session). Default MICROFLEET_CONSUMER_ID."),
    ] = None,
    processes: Annotated[int, typer.Option(min=1, help="Run N consumer processes: ids <prefix>-1..N.")] = 1,
    prefix: Annotated[str, typer.Option(help="Consumer id prefix with --processes.")] = "ingest",
    strategy: Annotated[
        str, typer.Option(help="Sample write path: copy (COPY, stage on conflict) or stage.")
    ] = "copy",
    housekeeping: Annotated[
        bool, typer.Option(help="Run partition maintenance and rollups periodically.")
    ] = True,
    late_horizon_days: Annotated[
        float | None,
        typer.Option(help="Quarantine data older than this as too_late (default: from storage_policy)."),
    ] = None,
    metrics_port: MetricsPort = None,  # with --processes N: this port, +1, ... +N-1
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Consume device uplinks from the broker (MQTT 5 shared subscription) into the database; with
    MICROFLEET_NATS_URL, from the NATS tier's JetStream durable (`microfleet nats setup`).

    Messages are acknowledged only after their transaction commits: kill it at any time and restart it
    with the same --consumer-id; nothing is lost or stored twice. Settings: MICROFLEET_* (cloud/config.py);
    logs: MICROFLEET_LOG_LEVEL, MICROFLEET_LOG_FORMAT=json for one JSON object per line. With --processes N
    and --metrics-port P, the consumers serve their metrics on P, P+1, ... P+N-1.
    """
    from cloud.config import CloudConfig

    base = service_cli.configure(verbose)
    port = metrics_port if metrics_port is not None else base.metrics_port
    if strategy not in ("copy", "stage"):
        raise typer.BadParameter("--strategy must be copy or stage")
    if processes > 1:
        if consumer_id is not None:
            raise typer.BadParameter("use --prefix, not --consumer-id, with --processes")
        extra = ["--strategy", strategy] + (["--verbose"] if verbose else [])
        _run_many(processes, prefix, extra, port)
        return
    from cloud.ingest.service import IngestService

    overrides: dict[str, object] = {}
    if consumer_id is not None:
        overrides["consumer_id"] = consumer_id
    config = CloudConfig.from_env(os.environ, **overrides)
    horizon = timedelta(days=late_horizon_days) if late_horizon_days is not None else None
    service = IngestService(
        config,
        strategy="copy" if strategy == "copy" else "stage",
        housekeeping=housekeeping,
        late_horizon=horizon,
        metrics_port=port,
        metrics_host=config.metrics_host,
    )
    service_cli.run(service.run)


def main() -> None:
    app()
