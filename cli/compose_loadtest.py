"""`microfleet compose-loadtest`: scale the compose project's `simulator` service to N replicas, watch each
container's CPU and memory through the Docker engine, and count what the cloud stored.

    microfleet compose-loadtest --replicas 4 --devices 2000 --hold 120

1. `docker compose -p <project> -f <file> up -d --no-deps --scale simulator=N simulator`, with
   SIM_REPLICAS=N and SIM_DEVICES=<devices> so the N replicas' slices cover the fleet exactly once
   (simulators/slicing.py);
2. every `--interval` seconds for `--hold` seconds, `container.stats(stream=False)` of each simulator
   container (docker SDK): CPU % as `docker stats` computes it, memory without the page cache;
3. after `--settle` seconds, from the database (the functions of cli/loadtest.py): loss = the gaps in
   each device's seq in `uplink_log` (the devices run inside the containers, so a lost tail after the
   last stored seq is not visible from here), duplicates, end-to-end latency p50/p95/p99/max;
4. a table, a JSON report; exit 1 when messages were lost. `--scale-down` stops the replicas afterwards.

The parsing and the summary are pure functions (tests/sim/test_compose_loadtest.py); the Docker part
needs a running engine and the compose project's images.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from cli.loadtest import latency_since, latency_text, loss_by_device, stored_seqs

console = Console()
SERVICE = "simulator"
MIB = 2**20


@dataclass(frozen=True, slots=True)
class ContainerSample:
    name: str
    at: float  # monotonic seconds
    cpu_pct: float  # of ONE core, as `docker stats` shows it (4 busy cores: 400 %)
    mem_bytes: int
    mem_limit: int


@dataclass(frozen=True, slots=True)
class ContainerSummary:
    name: str
    samples: int
    cpu_mean_pct: float
    cpu_max_pct: float
    mem_max_mib: float
    mem_limit_mib: float


@dataclass(frozen=True, slots=True)
class StoreFigures:
    devices_seen: int
    messages_stored: int
    loss: int  # seq gaps
    lost_by_device: dict[str, int]
    duplicates_stored: int
    latency_ms: dict[str, float | None]  # p50, p95, p99, max (None: no message measured), n


# -- pure: stats JSON -> figures ---------------------------------------------------------------------
def _int(d: Mapping[str, Any], *path: str) -> int:
    cur: Any = d
    for key in path:
        if not isinstance(cur, Mapping):
            return 0
        cur = cur.get(key)
    return int(cur) if isinstance(cur, int | float) and not isinstance(cur, bool) else 0


def cpu_percent(stats: Mapping[str, Any]) -> float:
    """CPU % of one core between `precpu_stats` and `cpu_stats` (the formula of `docker stats`): the
    container's share of the host's CPU time times the online CPUs. 0 when there is no previous reading
    (the first sample of a stream) or nothing moved."""
    cpu_delta = _int(stats, "cpu_stats", "cpu_usage", "total_usage") - _int(
        stats, "precpu_stats", "cpu_usage", "total_usage"
    )
    pre_system = _int(stats, "precpu_stats", "system_cpu_usage")
    system_delta = _int(stats, "cpu_stats", "system_cpu_usage") - pre_system
    cpus = _int(stats, "cpu_stats", "online_cpus")
    if cpus == 0:
        percpu = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("percpu_usage") or ()
        cpus = len(percpu)
    if pre_system == 0 or cpu_delta <= 0 or system_delta <= 0 or cpus == 0:
        return 0.0
    return cpu_delta / system_delta * cpus * 100.0


def memory_bytes(stats: Mapping[str, Any]) -> tuple[int, int]:
    """(used, limit): usage without the inactive page cache, as `docker stats` shows it (cgroup v1:
    `total_inactive_file`, v2: `inactive_file`)."""
    mem = stats.get("memory_stats") or {}
    usage, limit = _int(mem, "usage"), _int(mem, "limit")
    inner = mem.get("stats") or {}
    v1 = _int(inner, "total_inactive_file")  # cgroup v1 (it has `inactive_file` too, for its own pages)
    if "total_inactive_file" in inner and v1 < usage:
        return usage - v1, limit
    v2 = _int(inner, "inactive_file")
    return (usage - v2 if v2 < usage else usage), limit


def sample_of(name: str, stats: Mapping[str, Any], at: float) -> ContainerSample:
    used, limit = memory_bytes(stats)
    return ContainerSample(name.lstrip("/"), at, cpu_percent(stats), used, limit)


def summarize(samples: Iterable[ContainerSample]) -> list[ContainerSummary]:
    """Per container, by name: mean and max CPU %, peak memory; sorted by name."""
    by: dict[str, list[ContainerSample]] = {}
    for s in samples:
        by.setdefault(s.name, []).append(s)
    out = []
    for name in sorted(by):
        ss = by[name]
        cpu = [s.cpu_pct for s in ss]
        out.append(
            ContainerSummary(
                name=name,
                samples=len(ss),
                cpu_mean_pct=round(sum(cpu) / len(cpu), 1),
                cpu_max_pct=round(max(cpu), 1),
                mem_max_mib=round(max(s.mem_bytes for s in ss) / MIB, 1),
                mem_limit_mib=round(max(s.mem_limit for s in ss) / MIB, 1),
            )
        )
    return out


def expected_from_stored(seqs: Mapping[str, set[int]]) -> dict[str, int]:
    """The next seq each device must have given out, as far as the database can tell: max stored + 1."""
    return {dev: max(s) + 1 for dev, s in seqs.items() if s}


def summary_table(containers: Sequence[ContainerSummary], store: StoreFigures | None) -> Table:
    t = Table(title=f"microfleet compose-loadtest: {len(containers)} {SERVICE} containers")
    for col in ("container", "samples", "cpu % mean", "cpu % max", "mem MiB max", "mem limit MiB"):
        t.add_column(col, justify="left" if col == "container" else "right")
    for c in containers:
        t.add_row(
            c.name,
            str(c.samples),
            f"{c.cpu_mean_pct:.1f}",
            f"{c.cpu_max_pct:.1f}",
            f"{c.mem_max_mib:.1f}",
            f"{c.mem_limit_mib:.0f}",
        )
    if containers:
        t.add_row(
            "total",
            str(sum(c.samples for c in containers)),
            f"{sum(c.cpu_mean_pct for c in containers):.1f}",
            "",
            f"{sum(c.mem_max_mib for c in containers):.1f}",
            "",
            end_section=True,
        )
    if store is not None:
        lat = latency_text(store.latency_ms)
        colour = "green" if store.loss == 0 else "red"
        for k, v in (
            ("devices seen / messages stored", f"{store.devices_seen} / {store.messages_stored}"),
            ("loss (seq gaps)", f"[{colour}]{store.loss}[/]"),
            ("duplicates stored", str(store.duplicates_stored)),
            ("latency ms p50 / p95 / p99 / max", lat),
        ):
            t.add_row(k, "", "", "", "", v)
    return t


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


# -- Docker and the database --------------------------------------------------------------------------
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


def simulator_containers(client: Any, project: str) -> list[Any]:
    labels = [f"com.docker.compose.project={project}", f"com.docker.compose.service={SERVICE}"]
    return list(client.containers.list(filters={"label": labels, "status": "running"}))


def watch(client: Any, project: str, hold_s: float, interval_s: float) -> list[ContainerSample]:
    """Poll every simulator container's stats (in parallel: each call waits ~1 s for its second
    reading) every `interval_s` for `hold_s`."""
    samples: list[ContainerSample] = []
    end = time.monotonic() + hold_s
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="stats") as pool:
        while True:
            t = time.monotonic()
            containers = simulator_containers(client, project)
            if not containers:
                console.print(f"[yellow]no running {SERVICE} containers in project {project!r} yet[/]")
            raw = list(pool.map(lambda c: (c.name, c.stats(stream=False)), containers))
            samples += [sample_of(name, stats, t) for name, stats in raw]
            cpu = sum(s.cpu_pct for s in samples if s.at == t)
            console.print(f"{len(raw)} containers, {cpu:.0f} % cpu ({max(0.0, end - t):.0f} s left)")
            if time.monotonic() + interval_s > end:
                return samples
            time.sleep(max(0.0, t + interval_s - time.monotonic()))


def store_figures(database_url: str, prefix: str, since: datetime) -> StoreFigures:
    with psycopg.connect(database_url, autocommit=True) as conn:
        seqs, dup_rows = stored_seqs(conn, prefix)
        lost = loss_by_device(expected_from_stored(seqs), seqs)
        latency = latency_since(conn, prefix, since)
    return StoreFigures(
        devices_seen=len(seqs),
        messages_stored=sum(len(s) for s in seqs.values()),
        loss=sum(lost.values()),
        lost_by_device=dict(sorted(lost.items())[:50]),
        duplicates_stored=dup_rows,
        latency_ms=latency,
    )


def compose_loadtest(
    replicas: Annotated[int, typer.Option(min=1, help="Simulator containers to run.")] = 2,
    devices: Annotated[int, typer.Option(min=1, help="Simulated devices across all replicas.")] = 200,
    hold: Annotated[float, typer.Option(help="Seconds to watch the containers.")] = 60.0,
    interval: Annotated[float, typer.Option(help="Seconds between stats rounds.")] = 5.0,
    settle: Annotated[float, typer.Option(help="Seconds for the cloud to commit before counting.")] = 15.0,
    project: Annotated[str, typer.Option(help="Compose project name.")] = "microfleet",
    compose_file: Annotated[Path, typer.Option("--file", "-f")] = Path("docker-compose.yml"),
    compose: Annotated[str, typer.Option(help="The compose command.")] = "docker compose",
    database_url: Annotated[
        str, typer.Option(envvar="MICROFLEET_DATABASE_URL")
    ] = "postgresql://postgres:microfleet@127.0.0.1:5432/microfleet",
    prefix: Annotated[str, typer.Option(help="Device id prefix of the simulated devices.")] = "sim",
    scale_down: Annotated[bool, typer.Option(help="Stop the simulator replicas afterwards.")] = False,
    out: Annotated[Path, typer.Option(help="JSON report.")] = Path("compose-loadtest.json"),
) -> None:
    """Scale the compose `simulator` service to REPLICAS, watch its containers' CPU and memory for HOLD s,
    then report loss (seq gaps) and latency from the database; exit 1 on loss."""
    if not compose_file.exists():
        raise typer.BadParameter(f"{compose_file} not found: run from the repository root or pass --file")
    client = _engine()
    since = datetime.now(UTC)
    scale(compose, project, compose_file, replicas, devices)
    try:
        samples = watch(client, project, hold, interval)
    finally:
        if scale_down:
            scale(compose, project, compose_file, 0, devices)
    time.sleep(settle)
    try:
        store = store_figures(database_url, prefix, since)
    except psycopg.Error as exc:
        console.print(f"[red]cannot read the database ({exc}): check --database-url[/]")
        store = None
    containers = summarize(samples)
    console.print(summary_table(containers, store))
    report = {
        "replicas": replicas,
        "devices": devices,
        "containers": [asdict(c) for c in containers],
        "store": asdict(store) if store else None,
    }
    out.write_text(json.dumps(report, indent=2))
    console.print(f"report written to {out}")
    if store is None:
        raise typer.Exit(2)
    if store.loss:
        console.print(
            f"[red]FAIL: {store.loss} messages lost (seq gaps); see store.lost_by_device in {out}[/]"
        )
        raise typer.Exit(1)
