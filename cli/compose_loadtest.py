"""`microfleet compose-loadtest`: run the compose project's `simulator` service as N replicas of load
(`microfleet sim --load`: sessions back to back, device time = wall time), inject faults, watch every
container's CPU and memory through the Docker engine API (Docker or Podman), and count what the cloud stored.

    microfleet compose-loadtest --replicas 4 --devices 2000 --hold 120 --fault restart:broker@30

1. `docker compose -p <project> -f <file> up -d --no-deps --scale simulator=N simulator`, with
   SIM_REPLICAS=N and SIM_DEVICES=<devices> so the N replicas' slices cover the fleet exactly once
   (simulators/slicing.py);
2. for `--hold` seconds, every `--interval`: each running container's cumulative CPU time (cgroup usage,
   `cpu_stats.cpu_usage.total_usage`) and memory; CPU % is the CPU time used between two readings of the
   same container over the wall time between them (a restarted container's counter starts again at 0).
   Each `--fault ACTION:SERVICE[:N]@SECONDS` (restart, stop or kill; N: the replica number) runs at its
   time after the scale-up;
3. the simulators are stopped (SIGTERM: open sessions end, each outbox drains until the cloud's commit
   marks cover it; exit code 0 = drained, else messages were left) and removed;
4. from the database (functions of cli/loadtest.py): loss = the gaps in each device's seq in `uplink_log`
   (together with the drained outboxes: nothing a device created was lost), duplicates, and end-to-end
   latency p50/p95/p99/max (`stored_at - sent_at`: the device's timestamp to the ingest commit) of the
   data messages sent since the scale-up;
5. rich tables and a JSON report; exit 1 when messages were lost, a device stored nothing, an outbox did
   not drain or a fault could not be injected.

The parsing and the summaries are pure functions (tests/sim/test_compose_loadtest.py); the engine part
runs in `make compose-test` (scripts/compose-test).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console

from cli.compose_report import ContainerSample, FaultRun, Report, StoreFigures, print_report, summarize
from cli.loadtest import latency_since, loss_by_device, stored_seqs

console = Console(width=None if os.isatty(1) else 120)
SERVICE = "simulator"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"


@dataclass(frozen=True, slots=True)
class Fault:
    action: str  # restart | stop | kill
    service: str
    number: int | None  # the replica (compose's container number); None: the first one
    at_s: float

    @property
    def text(self) -> str:
        number = f":{self.number}" if self.number is not None else ""
        return f"{self.action}:{self.service}{number}@{self.at_s:g}"


FAULT_RE = re.compile(r"(restart|stop|kill):([A-Za-z0-9_.-]+)(?::(\d+))?@(\d+(?:\.\d+)?)")


def parse_fault(text: str) -> Fault:
    """`restart:broker@20`, `stop:ingest:3@40`, `kill:alerts@10` -> Fault; BadParameter otherwise."""
    m = FAULT_RE.fullmatch(text.strip())
    if m is None:
        raise typer.BadParameter(
            f"--fault {text!r}: expected ACTION:SERVICE[:N]@SECONDS, ACTION restart, stop or kill "
            "(e.g. restart:broker@20, stop:ingest:3@40)"
        )
    action, service, number, at = m.groups()
    return Fault(action, service, int(number) if number else None, float(at))


def parse_timings(items: Iterable[str]) -> dict[str, float]:
    """`build=205` ... -> {"build": 205.0}; BadParameter on anything else."""
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"--timing {item!r}: expected NAME=SECONDS") from None
        if not name.strip():
            raise typer.BadParameter(f"--timing {item!r}: expected NAME=SECONDS")
    return out


# -- pure: engine stats JSON -> figures -------------------------------------------------------------
def _int(d: Mapping[str, Any], *path: str) -> int:
    cur: Any = d
    for key in path:
        if not isinstance(cur, Mapping):
            return 0
        cur = cur.get(key)
    return int(cur) if isinstance(cur, int | float) and not isinstance(cur, bool) else 0


def memory_bytes(stats: Mapping[str, Any]) -> tuple[int, int]:
    """(used, limit): usage without the inactive page cache, as `docker stats` shows it (cgroup v1:
    `total_inactive_file`, v2: `inactive_file`; Podman reports the usage alone)."""
    mem = stats.get("memory_stats") or {}
    usage, limit = _int(mem, "usage"), _int(mem, "limit")
    inner = mem.get("stats") or {}
    v1 = _int(inner, "total_inactive_file")  # cgroup v1 (it has `inactive_file` too, for its own pages)
    if "total_inactive_file" in inner and v1 < usage:
        return usage - v1, limit
    v2 = _int(inner, "inactive_file")
    return (usage - v2 if v2 < usage else usage), limit


def sample_of(name: str, service: str, stats: Mapping[str, Any], at: float) -> ContainerSample:
    used, limit = memory_bytes(stats)
    cpu_ns = _int(stats, "cpu_stats", "cpu_usage", "total_usage")
    return ContainerSample(name.lstrip("/"), service, at, cpu_ns, used, limit)


def expected_from_stored(seqs: Mapping[str, set[int]]) -> dict[str, int]:
    """The next seq each device must have given out, as far as the database can tell: max stored + 1."""
    return {dev: max(s) + 1 for dev, s in seqs.items() if s}


def scale_command(compose: str, project: str, compose_file: Path, replicas: int) -> list[str]:
    """The `docker compose` invocation that scales the simulator service (its dependencies untouched)."""
    return [
        *shlex.split(compose),
        "-p",
        project,
        "-f",
        str(compose_file),
        "up",
        "-d",
        "--no-deps",
        "--scale",
        f"{SERVICE}={replicas}",
        SERVICE,
    ]


# -- the engine and the database --------------------------------------------------------------------
def scale(compose: str, project: str, compose_file: Path, replicas: int, devices: int) -> None:
    cmd = scale_command(compose, project, compose_file, replicas)
    env = {**os.environ, "SIM_REPLICAS": str(replicas), "SIM_DEVICES": str(devices)}
    try:
        subprocess.run(cmd, check=True, env=env)
    except FileNotFoundError:
        raise typer.BadParameter(
            f"{cmd[0]!r} not found: install Docker with the compose plugin, or pass --compose docker-compose"
        ) from None
    except subprocess.CalledProcessError as exc:
        console.print(f"[red]{shlex.join(cmd)} failed (exit {exc.returncode}): see its output above[/]")
        raise typer.Exit(2) from None


def _engine() -> Any:
    import docker  # type: ignore[import-untyped]

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        console.print(f"[red]cannot reach the Docker engine ({exc}): start it, or point DOCKER_HOST at it[/]")
        raise typer.Exit(2) from None
    return client


def containers(client: Any, project: str, service: str | None = None) -> list[Any]:
    labels = [f"{PROJECT_LABEL}={project}"] + ([f"{SERVICE_LABEL}={service}"] if service else [])
    return list(client.containers.list(filters={"label": labels, "status": "running"}))


def _inject(client: Any, project: str, fault: Fault, t0: float) -> FaultRun:
    started = time.monotonic()
    found = sorted(
        containers(client, project, fault.service), key=lambda c: int(c.labels.get(NUMBER_LABEL, 0))
    )
    if fault.number is not None:
        found = [c for c in found if c.labels.get(NUMBER_LABEL) == str(fault.number)]
    if not found:
        return FaultRun(fault.text, "", round(started - t0, 1), 0.0, "no running container")
    target = found[0]
    try:
        if fault.action == "restart":
            target.restart(timeout=5)
        elif fault.action == "stop":
            target.stop(timeout=30)
        else:
            target.kill()
    except Exception as exc:  # noqa: BLE001 - the engine's error is the fault's result, reported
        return FaultRun(fault.text, target.name, round(started - t0, 1), 0.0, str(exc)[:200])
    return FaultRun(
        fault.text, target.name, round(started - t0, 1), round(time.monotonic() - started, 1), None
    )


def _reading(c: Any) -> tuple[str, str, Any] | None:
    """(name, service, stats) of one container, or None when it has none to give at this instant: a
    container the fault is restarting or stopping answers with an empty body (Podman) or 404/409."""
    import docker.errors  # type: ignore[import-untyped]

    try:
        return c.name, c.labels.get(SERVICE_LABEL, ""), c.stats(stream=False)
    except (docker.errors.APIError, ValueError) as exc:  # requests' JSONDecodeError is a ValueError
        console.print(f"no stats from {c.name} at this reading ({type(exc).__name__}); skipped")
        return None


def watch(
    client: Any, project: str, hold_s: float, interval_s: float, faults: list[Fault]
) -> tuple[list[ContainerSample], list[FaultRun]]:
    """Read every running container's stats every `interval_s` for `hold_s` and run each fault at its
    time (in the pool: a stop waits for the container's grace period)."""
    samples: list[ContainerSample] = []
    pending = sorted(faults, key=lambda f: f.at_s)
    started: list[Future[FaultRun]] = []
    t0 = time.monotonic()
    end = t0 + hold_s
    next_stats = t0
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="engine") as pool:
        while True:
            now = time.monotonic()
            while pending and now - t0 >= pending[0].at_s:
                fault = pending.pop(0)
                console.print(f"fault at {now - t0:.0f} s: {fault.text}")
                started.append(pool.submit(_inject, client, project, fault, t0))
            if now >= next_stats:
                found = containers(client, project)
                raw = [r for r in pool.map(_reading, found) if r is not None]
                samples += [sample_of(name, service, stats, now) for name, service, stats in raw]
                sims = sum(1 for _, service, _ in raw if service == SERVICE)
                console.print(
                    f"{now - t0:3.0f} s: {len(raw)} containers ({sims} {SERVICE}), {max(0.0, end - now):.0f} s left"
                )
                next_stats = now + interval_s
            if now >= end and not pending:
                break
            wake = min(next_stats, end, *(t0 + f.at_s for f in pending[:1]))
            time.sleep(max(0.05, wake - time.monotonic()))
        runs = [f.result() for f in started]
    return samples, runs


def stop_simulators(client: Any, project: str, timeout_s: int) -> dict[str, int]:
    """SIGTERM every simulator container (they end their sessions and drain their outboxes) and wait;
    their exit codes by name (0: drained)."""
    sims = containers(client, project, SERVICE)
    with ThreadPoolExecutor(max_workers=max(1, len(sims)), thread_name_prefix="stop") as pool:
        list(pool.map(lambda c: c.stop(timeout=timeout_s), sims))
    codes = {}
    for c in sims:
        c.reload()
        codes[c.name] = int(c.attrs.get("State", {}).get("ExitCode", -1))
    return dict(sorted(codes.items()))


def store_figures(database_url: str, prefix: str, since: datetime) -> StoreFigures:
    with psycopg.connect(database_url, autocommit=True) as conn:
        seqs, dup_rows = stored_seqs(conn, prefix)
        lost = loss_by_device(expected_from_stored(seqs), seqs)
        latency = latency_since(conn, prefix, since)
        row = conn.execute(
            "select count(*), count(*) filter (where kind <> 'status') from uplink_log "
            "where device_id like %s and stored_at >= %s",
            (prefix + "-%", since),
        ).fetchone()
    return StoreFigures(
        devices_seen=len(seqs),
        messages_stored=sum(len(s) for s in seqs.values()),
        messages_in_run=int(row[0]) if row else 0,
        data_messages_in_run=int(row[1]) if row else 0,
        loss=sum(lost.values()),
        lost_by_device=dict(sorted(lost.items())[:50]),
        duplicates_stored=dup_rows,
        latency_ms=latency,
    )


def compose_loadtest(
    replicas: Annotated[int, typer.Option(min=1, help="Simulator containers to run.")] = 2,
    devices: Annotated[int, typer.Option(min=1, help="Simulated devices across all replicas.")] = 200,
    hold: Annotated[float, typer.Option(help="Seconds of load (the simulators run this long).")] = 60.0,
    interval: Annotated[float, typer.Option(help="Seconds between stats rounds.")] = 5.0,
    settle: Annotated[float, typer.Option(help="Seconds to wait after the simulators exited.")] = 2.0,
    drain_timeout: Annotated[int, typer.Option(help="Seconds a simulator may take to drain on stop.")] = 90,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            help="ACTION:SERVICE[:N]@SECONDS (restart|stop|kill), repeatable: e.g. restart:broker@20."
        ),
    ] = None,
    timing: Annotated[
        list[str] | None, typer.Option(help="NAME=SECONDS to keep in the report (e.g. build=40), repeatable.")
    ] = None,
    project: Annotated[str, typer.Option(help="Compose project name.")] = "microfleet",
    compose_file: Annotated[Path, typer.Option("--file", "-f")] = Path("docker-compose.yml"),
    compose: Annotated[str, typer.Option(help="The compose command.")] = "docker compose",
    database_url: Annotated[
        str, typer.Option(envvar="MICROFLEET_DATABASE_URL")
    ] = "postgresql://postgres:microfleet@127.0.0.1:5432/microfleet",
    prefix: Annotated[str, typer.Option(help="Device id prefix of the simulated devices.")] = "sim",
    out: Annotated[Path, typer.Option(help="JSON report.")] = Path("compose-loadtest.json"),
) -> None:
    """Run the compose `simulator` service as REPLICAS load containers for HOLD s with FAULTs, watch every
    container's CPU and memory, stop the simulators (they drain), then report loss (seq gaps) and latency
    from the database; exit 1 on loss, a device that stored nothing, an undrained outbox or a failed fault."""
    if not compose_file.exists():
        raise typer.BadParameter(f"{compose_file} not found: run from the repository root or pass --file")
    faults = [parse_fault(f) for f in fault or ()]
    timings = parse_timings(timing or ())
    client = _engine()
    since = datetime.now(UTC)
    t_load = time.monotonic()
    scale(compose, project, compose_file, replicas, devices)
    try:
        samples, fault_runs = watch(client, project, hold, interval, faults)
        console.print(
            f"stopping the {SERVICE} containers (they drain their outboxes, up to {drain_timeout} s)"
        )
        exit_codes = stop_simulators(client, project, drain_timeout)
    finally:
        scale(compose, project, compose_file, 0, devices)
    time.sleep(settle)
    timings["load"] = round(time.monotonic() - t_load, 1)
    try:
        store = store_figures(database_url, prefix, since)
    except psycopg.Error as exc:
        console.print(f"[red]cannot read the database ({exc}): check --database-url[/]")
        store = None
    report = Report(
        replicas=replicas,
        devices=devices,
        hold_s=hold,
        containers=summarize(samples),
        simulator_exit_codes=exit_codes,
        faults=fault_runs,
        store=store,
        timings_s=timings,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(report), indent=2))
    print_report(console, report)
    console.print(f"report written to {out}")
    if store is None:
        raise typer.Exit(2)
    problems = report.problems()
    for p in problems:
        console.print(f"[red]FAIL: {p}[/]")
    if problems:
        raise typer.Exit(1)
