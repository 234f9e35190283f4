"""The figures of `microfleet compose-loadtest` (cli/compose_loadtest.py), pure: per-container CPU and memory
from cumulative readings, the report, its verdict and its tables."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from cli.loadtest import latency_text

MIB = 2**20
SIMULATOR = "simulator"


@dataclass(frozen=True, slots=True)
class ContainerSample:
    name: str
    service: str
    at: float  # monotonic seconds
    cpu_ns: int  # the container's cumulative CPU time (cgroup usage)
    mem_bytes: int
    mem_limit: int


@dataclass(frozen=True, slots=True)
class ContainerSummary:
    name: str
    service: str
    samples: int
    watched_s: float  # wall time covered by pairs of readings
    cpu_s: float  # CPU time used in that time
    cpu_mean_pct: float | None  # of one core (None: fewer than two readings)
    cpu_max_pct: float | None  # the busiest interval between two readings
    mem_max_mib: float


@dataclass(frozen=True, slots=True)
class FaultRun:
    fault: str  # as given: restart:broker@20
    container: str
    at_s: float  # after the scale-up
    took_s: float
    error: str | None


@dataclass(frozen=True, slots=True)
class StoreFigures:
    devices_seen: int
    messages_stored: int  # every message of the prefix's devices in uplink_log
    messages_in_run: int  # stored since the scale-up
    data_messages_in_run: int  # of which not status births (the latency's population)
    loss: int  # seq gaps
    lost_by_device: dict[str, int]
    duplicates_stored: int
    latency_ms: dict[str, float | None]  # p50, p95, p99, max (None: no message measured), n


@dataclass(slots=True)
class Report:
    replicas: int
    devices: int
    hold_s: float
    containers: list[ContainerSummary]
    simulator_exit_codes: dict[str, int]  # 0: the replica's outboxes drained on stop
    faults: list[FaultRun]
    store: StoreFigures | None
    timings_s: dict[str, float] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Why the run fails; empty when it passes."""
        out = []
        s = self.store
        if s is None:
            return ["the database could not be read"]
        if s.loss:
            out.append(f"{s.loss} messages lost (seq gaps): store.lost_by_device")
        if s.devices_seen < self.devices:
            out.append(f"{s.devices_seen} of {self.devices} devices stored anything")
        if not s.latency_ms.get("n"):
            out.append("no data message was stored during the run (latency from nothing)")
        undrained = {n: c for n, c in self.simulator_exit_codes.items() if c != 0}
        if len(self.simulator_exit_codes) < self.replicas or undrained:
            out.append(
                f"{len(self.simulator_exit_codes) - len(undrained)} of {self.replicas} simulators exited 0 "
                f"(outboxes drained); exit codes {self.simulator_exit_codes}"
            )
        out += [f"fault {f.fault} was not injected: {f.error}" for f in self.faults if f.error]
        return out


def summarize(samples: Iterable[ContainerSample]) -> list[ContainerSummary]:
    """Per container (by service, then name): CPU between consecutive readings (a counter that went back
    means the container restarted: its new count is what it used since), peak memory."""
    by: dict[str, list[ContainerSample]] = {}
    for s in samples:
        by.setdefault(s.name, []).append(s)
    out = []
    for name, ss in by.items():
        ss.sort(key=lambda s: s.at)
        used_ns, wall, peak = 0, 0.0, None
        for a, b in itertools.pairwise(ss):
            dt = b.at - a.at
            if dt <= 0:
                continue
            d = b.cpu_ns - a.cpu_ns if b.cpu_ns >= a.cpu_ns else b.cpu_ns
            used_ns += d
            wall += dt
            pct = d / 1e9 / dt * 100
            peak = pct if peak is None else max(peak, pct)
        out.append(
            ContainerSummary(
                name=name,
                service=ss[0].service,
                samples=len(ss),
                watched_s=round(wall, 1),
                cpu_s=round(used_ns / 1e9, 2),
                cpu_mean_pct=round(used_ns / 1e9 / wall * 100, 1) if wall else None,
                cpu_max_pct=round(peak, 1) if peak is not None else None,
                mem_max_mib=round(max(s.mem_bytes for s in ss) / MIB, 1),
            )
        )
    return sorted(out, key=lambda c: (c.service, c.name))


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def containers_table(cs: list[ContainerSummary]) -> Table:
    t = Table(title="CPU (% of one core) and memory per container")
    for col in ("service", "container", "readings", "CPU s", "CPU % mean", "CPU % max", "mem MiB max"):
        t.add_column(col, justify="left" if col in ("service", "container") else "right")
    for c in cs:
        t.add_row(
            c.service,
            c.name,
            str(c.samples),
            f"{c.cpu_s:.1f}",
            _pct(c.cpu_mean_pct),
            _pct(c.cpu_max_pct),
            f"{c.mem_max_mib:.0f}",
        )
    if cs:
        t.add_row(
            "all",
            "",
            "",
            f"{sum(c.cpu_s for c in cs):.1f}",
            _pct(sum(c.cpu_mean_pct or 0.0 for c in cs)),
            "",
            f"{sum(c.mem_max_mib for c in cs):.0f}",
            style="bold",
        )
    return t


def result_table(r: Report) -> Table:
    t = Table(
        title=f"microfleet compose-loadtest: {r.devices} devices in {r.replicas} {SIMULATOR} containers"
    )
    t.add_column("figure")
    t.add_column("value")
    s = r.store
    if s is not None:
        ok = "green" if s.loss == 0 else "red"
        rate = s.messages_in_run / r.hold_s if r.hold_s else 0.0
        t.add_row("devices seen", f"{s.devices_seen} of {r.devices}")
        t.add_row(
            "messages stored in the run", f"{s.messages_in_run} ({s.data_messages_in_run} data), {rate:.1f}/s"
        )
        t.add_row("loss (seq gaps)", f"[{ok}]{s.loss}[/]")
        t.add_row("duplicates stored", str(s.duplicates_stored))
        t.add_row("latency ms p50 / p95 / p99 / max", latency_text(s.latency_ms))
    drained = sum(1 for c in r.simulator_exit_codes.values() if c == 0)
    colour = "green" if drained == r.replicas == len(r.simulator_exit_codes) else "red"
    t.add_row("simulators drained on stop", f"[{colour}]{drained} of {r.replicas}[/]")
    for f in r.faults:
        what = f"[red]{f.error}[/]" if f.error else f"{f.container} at {f.at_s:.0f} s, took {f.took_s:.1f} s"
        t.add_row(f"fault {f.fault}", what)
    if not r.faults:
        t.add_row("faults", "none")
    if r.timings_s:
        t.add_row("timings s", ", ".join(f"{k} {v:g}" for k, v in r.timings_s.items()))
    return t


def print_report(console: Console, r: Report) -> None:
    console.print(containers_table(r.containers))
    console.print(result_table(r))
