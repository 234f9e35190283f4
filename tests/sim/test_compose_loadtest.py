"""`microfleet compose-loadtest`: the pure parts (Docker stats -> figures, the summary) on stats JSON in the
Engine API's shape (tests/sim/data: cgroup v2, cgroup v1, a first reading without a previous one). The
Docker part needs an engine, which this machine does not have."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from cli.compose_loadtest import (
    MIB,
    ContainerSample,
    StoreFigures,
    compose_loadtest,
    cpu_percent,
    expected_from_stored,
    memory_bytes,
    sample_of,
    scale_command,
    summarize,
    summary_table,
)
from cli.loadtest import loss_by_device

DATA = Path(__file__).parent / "data"


def stats(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / f"docker-stats-{name}.json").read_text())
    return loaded


@pytest.mark.parametrize(
    ("name", "cpu", "mem_mib", "limit_mib"),
    [
        ("cgroup2", 50.0, 100.0, 2048.0),  # 0.5 s of 2 s host time on 2 CPUs; usage - inactive_file
        ("cgroup1", 100.0, 250.0, 8192.0),  # CPUs from percpu_usage (4); usage - total_inactive_file
        ("first-read", 0.0, 50.0, 2048.0),  # no previous reading: 0 %; cache > usage: not subtracted
    ],
)
def test_cpu_and_memory_as_docker_stats_shows_them(
    name: str, cpu: float, mem_mib: float, limit_mib: float
) -> None:
    s = stats(name)
    assert cpu_percent(s) == pytest.approx(cpu)
    used, limit = memory_bytes(s)
    assert used / MIB == pytest.approx(mem_mib) and limit / MIB == limit_mib
    sample = sample_of(s["name"], s, 1.0)
    assert sample.name.startswith("microfleet-simulator-") and sample.cpu_pct == pytest.approx(cpu)


def test_missing_or_odd_fields_give_zero_not_an_error() -> None:
    assert cpu_percent({}) == 0.0
    assert memory_bytes({}) == (0, 0)
    odd = stats("cgroup2")
    odd["cpu_stats"]["cpu_usage"]["total_usage"] = 1  # a counter reset: negative delta
    assert cpu_percent(odd) == 0.0
    odd["cpu_stats"]["online_cpus"] = None
    assert cpu_percent(odd) == 0.0


def test_summary_per_container_and_table() -> None:
    a, b = stats("cgroup2"), stats("cgroup1")
    samples = [
        sample_of(a["name"], a, 0.0),
        sample_of(b["name"], b, 0.0),
        ContainerSample("microfleet-simulator-1", 5.0, 30.0, 150 * MIB, 2048 * MIB),
    ]
    s1, s2 = summarize(samples)
    assert (s1.name, s1.samples, s1.cpu_mean_pct, s1.cpu_max_pct, s1.mem_max_mib) == (
        "microfleet-simulator-1",
        2,
        40.0,
        50.0,
        150.0,
    )
    assert (s2.name, s2.samples, s2.cpu_mean_pct, s2.mem_max_mib, s2.mem_limit_mib) == (
        "microfleet-simulator-2",
        1,
        100.0,
        250.0,
        8192.0,
    )
    store = StoreFigures(
        2, 10, 1, {"sim-00001": 1}, 0, {"p50": 12.0, "p95": 40.5, "p99": 80.0, "max": 95.0, "n": 9}
    )
    console = Console(record=True, width=160)
    console.print(summary_table([s1, s2], store))
    text = console.export_text()
    assert "microfleet-simulator-2" in text and "140.0" in text  # total mean cpu
    assert "12.0 / 40.5 / 80.0 / 95.0 (9 messages)" in text and "loss (seq gaps)" in text


def test_loss_is_the_gaps_in_each_device_seq() -> None:
    seqs = {"sim-00000": {0, 1, 2, 3}, "sim-00001": {0, 2, 5}, "sim-00002": set()}
    expected = expected_from_stored(seqs)
    assert expected == {"sim-00000": 4, "sim-00001": 6}
    assert loss_by_device(expected, seqs) == {"sim-00001": 3}


def test_scale_command() -> None:
    cmd = scale_command("docker compose", "mf", Path("docker-compose.yml"), 4)
    assert cmd == [
        "docker",
        "compose",
        "-p",
        "mf",
        "-f",
        "docker-compose.yml",
        "up",
        "-d",
        "--no-deps",
        "--scale",
        "simulator=4",
        "simulator",
    ]
    assert scale_command("docker-compose", "mf", Path("x.yml"), 1)[:2] == ["docker-compose", "-p"]


def test_a_missing_compose_file_is_a_clear_error_before_docker(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(compose_loadtest)
    result = CliRunner().invoke(app, ["--file", str(tmp_path / "nope.yml")])
    assert result.exit_code == 2
    # rich wraps the error panel anywhere, even inside the (long) path: compare without any whitespace
    said = "".join(result.output.replace("│", " ").split())
    assert "nope.ymlnotfound" in said and "pass--file" in said
