"""`microfleet compose-loadtest`: the pure parts on stats JSON in the Engine API's shape (tests/sim/data:
cgroup v2, cgroup v1, a reading without page-cache figures, as Podman gives it): CPU from cumulative
readings (restarts included), memory, faults and timings parsed, the verdict and the tables. The engine
part runs for real in `make compose-test` (scripts/compose-test)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from cli.compose_loadtest import (
    Fault,
    compose_loadtest,
    expected_from_stored,
    memory_bytes,
    parse_fault,
    parse_timings,
    sample_of,
    scale_command,
)
from cli.compose_report import (
    MIB,
    ContainerSample,
    FaultRun,
    Report,
    StoreFigures,
    print_report,
    summarize,
)
from cli.loadtest import loss_by_device

DATA = Path(__file__).parent / "data"
GB = 10**9


def stats(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / f"docker-stats-{name}.json").read_text())
    return loaded


@pytest.mark.parametrize(
    ("name", "cpu_ns", "mem_mib", "limit_mib"),
    [
        ("cgroup2", 2 * GB, 100.0, 2048.0),  # usage - inactive_file
        ("cgroup1", 8 * GB, 250.0, 8192.0),  # usage - total_inactive_file
        ("first-read", 350_000_000, 50.0, 2048.0),  # cache > usage: not subtracted
    ],
)
def test_cumulative_cpu_and_memory_of_a_reading(
    name: str, cpu_ns: int, mem_mib: float, limit_mib: float
) -> None:
    s = stats(name)
    used, limit = memory_bytes(s)
    assert used / MIB == pytest.approx(mem_mib) and limit / MIB == limit_mib
    sample = sample_of(s["name"], "simulator", s, 1.0)
    assert sample.name.startswith("microfleet-simulator-") and sample.cpu_ns == cpu_ns
    assert sample_of("x", "y", {}, 0.0).cpu_ns == 0 and memory_bytes({}) == (0, 0)


def _s(name: str, at: float, cpu_s: float, mem_mib: float = 10.0, service: str = "ingest") -> ContainerSample:
    return ContainerSample(name, service, at, int(cpu_s * GB), int(mem_mib * MIB), 0)


def test_cpu_per_container_from_readings_restarts_included() -> None:
    samples = [
        _s("mf_ingest_1", 0.0, 10.0),
        _s("mf_ingest_1", 5.0, 11.0, 30.0),  # 1 s of CPU in 5 s: 20 %
        _s("mf_ingest_1", 10.0, 14.0),  # 3 s in 5 s: 60 %
        _s("mf_broker_1", 0.0, 50.0, service="broker"),
        _s("mf_broker_1", 10.0, 0.5, service="broker"),  # restarted: 0.5 s since, in 10 s
        _s("mf_api_1", 3.0, 2.0, service="api"),  # one reading: no interval
    ]
    api, broker, ingest = summarize(samples)  # by service, then name
    assert (ingest.samples, ingest.watched_s, ingest.cpu_s) == (3, 10.0, 4.0)
    assert (ingest.cpu_mean_pct, ingest.cpu_max_pct, ingest.mem_max_mib) == (40.0, 60.0, 30.0)
    assert (broker.cpu_s, broker.cpu_mean_pct) == (0.5, 5.0)
    assert (api.samples, api.cpu_mean_pct, api.cpu_max_pct) == (1, None, None)


def test_faults_and_timings_parse() -> None:
    assert parse_fault("restart:broker@20") == Fault("restart", "broker", None, 20.0)
    assert parse_fault(" stop:ingest:3@40.5 ") == Fault("stop", "ingest", 3, 40.5)
    assert parse_fault("kill:alerts@0").text == "kill:alerts@0"
    for bad in ("reboot:broker@1", "stop:ingest", "stop@3", "stop:ingest:x@3"):
        with pytest.raises(typer.BadParameter, match="ACTION:SERVICE"):
            parse_fault(bad)
    assert parse_timings(["build=40", "up=17.5"]) == {"build": 40.0, "up": 17.5}
    for bad in ("build", "=3", "up=fast"):
        with pytest.raises(typer.BadParameter, match="NAME=SECONDS"):
            parse_timings([bad])


def _report(**changes: Any) -> Report:
    store = StoreFigures(
        devices_seen=60,
        messages_stored=900,
        messages_in_run=840,
        data_messages_in_run=780,
        loss=0,
        lost_by_device={},
        duplicates_stored=2,
        latency_ms={"p50": 12.0, "p95": 40.5, "p99": 80.0, "max": 950.0, "n": 780},
    )
    base: dict[str, Any] = {
        "replicas": 3,
        "devices": 60,
        "hold_s": 40.0,
        "containers": summarize(
            [
                _s("mflocal_simulator_1", 0, 1, service="simulator"),
                _s("mflocal_simulator_1", 5, 2, service="simulator"),
            ]
        ),
        "simulator_exit_codes": {f"mflocal_simulator_{i}": 0 for i in (1, 2, 3)},
        "faults": [FaultRun("restart:broker@10", "mflocal_broker_1", 10.0, 2.1, None)],
        "store": store,
        "timings_s": {"build": 12.0, "up": 17.0, "load": 80.0},
    }
    return Report(**{**base, **changes})


def test_the_verdict_names_every_problem() -> None:
    assert _report().problems() == []
    bad = _report(
        store=StoreFigures(
            58,
            10,
            10,
            0,
            3,
            {"sim-00001": 3},
            0,
            {"p50": None, "p95": None, "p99": None, "max": None, "n": 0},
        ),
        simulator_exit_codes={"mflocal_simulator_1": 0, "mflocal_simulator_2": 1},
        faults=[FaultRun("stop:ingest:3@20", "", 20.0, 0.0, "no running container")],
    )
    problems = " | ".join(bad.problems())
    for said in (
        "3 messages lost",
        "58 of 60 devices",
        "no data message",
        "1 of 3 simulators exited 0",
        "stop:ingest:3@20 was not injected",
    ):
        assert said in problems, problems
    assert _report(store=None).problems() == ["the database could not be read"]


def test_the_printed_report_is_readable() -> None:
    console = Console(record=True, width=120)
    print_report(console, _report())
    text = console.export_text()
    assert "mflocal_simulator_1" in text  # whole names at 120 columns, not cut
    assert "12.0 / 40.5 / 80.0 / 950.0 (780 messages)" in text
    assert "840 (780 data), 21.0/s" in text and "3 of 3" in text
    assert "mflocal_broker_1 at 10 s, took 2.1 s" in text and "build 12, up 17, load 80" in text


def test_loss_is_the_gaps_in_each_device_seq() -> None:
    seqs = {"sim-00000": {0, 1, 2, 3}, "sim-00001": {0, 2, 5}, "sim-00002": set()}
    expected = expected_from_stored(seqs)
    assert expected == {"sim-00000": 4, "sim-00001": 6}
    assert loss_by_device(expected, seqs) == {"sim-00001": 3}


def test_scale_command() -> None:
    cmd = scale_command("docker compose", "mf", Path("docker-compose.yml"), 4)
    assert cmd == [
        *("docker", "compose", "-p", "mf", "-f", "docker-compose.yml", "up", "-d", "--no-deps"),
        *("--scale", "simulator=4", "simulator"),
    ]
    assert scale_command("docker-compose", "mf", Path("x.yml"), 1)[:2] == ["docker-compose", "-p"]


def test_a_missing_compose_file_or_a_bad_fault_is_a_clear_error_before_docker(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(compose_loadtest)
    result = CliRunner().invoke(app, ["--file", str(tmp_path / "nope.yml")])
    assert result.exit_code == 2
    # rich wraps the error panel anywhere, even inside the (long) path: compare without any whitespace
    said = "".join(result.output.replace("│", " ").split())
    assert "nope.ymlnotfound" in said and "pass--file" in said
    compose = tmp_path / "c.yml"
    compose.write_text("services: {}\n")
    result = CliRunner().invoke(app, ["--file", str(compose), "--fault", "reboot:broker@3"])
    assert result.exit_code == 2 and "ACTION:SERVICE" in "".join(result.output.split())
