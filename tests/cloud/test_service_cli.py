"""The service commands (`ingest`, `alerts run`, `ota serve`) share cloud/runtime/service_cli: a metrics
port that is taken, or a setting that does not parse, is one `error:` line on stderr saying what to do,
and exit 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.support.services import ROOT

COMMANDS = (
    ["ingest"],
    ["alerts", "run"],
    ["ota", "serve", "--artifact-base-url", "http://127.0.0.1:9/artifacts"],
)


def microfleet(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=os.environ | {"MICROFLEET_DATABASE_URL": "postgresql://postgres@127.0.0.1:9/none"} | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_taken_metrics_port_is_a_clear_error(command: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        run = microfleet([*command, "--metrics-port", str(port)])
    assert run.returncode == 2, run.stdout + run.stderr
    [line] = [x for x in run.stderr.splitlines() if x.startswith("error: ")]
    assert str(port) in line and "choose another MICROFLEET_METRICS_PORT" in line


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_setting_that_does_not_parse_is_a_clear_error(command: list[str]) -> None:
    run = microfleet(command, MICROFLEET_COMMIT_MARKS="perhaps")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "MICROFLEET_COMMIT_MARKS" in run.stderr
