"""The README's walk-through, run as written: its shell block, step by step, in one bash (the CLI as a user
types it, background services and all), on a scratch database and a private broker. Between steps the test
waits for what a user would see before going on (the fleet online, the protocol applied, alerts raised)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.support.services import ROOT, Mosquitto

pytestmark = pytest.mark.slow
STEP = re.compile(r"^# (\d+)\. ")


def walkthrough_steps(readme: str) -> dict[int, list[str]]:
    """The shell lines of the README's walk-through, by step number (`# N. ...` comment lines)."""
    block = readme.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    lines = [ln for ln in block.strip().splitlines() if not ln.startswith("```")]
    steps: dict[int, list[str]] = {}
    current = -1
    for line in lines:
        m = STEP.match(line)
        if m:
            current = int(m.group(1))
            steps[current] = []
        elif line.strip():
            steps[current].append(line)
    return steps


class Shell:
    """One bash reading the walk-through's lines; its output read by a thread (owned, joined)."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: the background services are stopped with it
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.transcript: list[str] = []
        self.reader = threading.Thread(target=self._read, name="walkthrough-shell", daemon=True)
        self.reader.start()
        self.send("set -eo pipefail")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def run(self, n: int, lines: list[str], timeout_s: float) -> str:
        for line in lines:
            self.send(line)
        self.send(f"echo @@step-{n}-done")
        out: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"step {n} did not finish in {timeout_s} s:\n" + "\n".join(out)
                ) from None
            if line is None:
                raise AssertionError(f"step {n} failed (the shell stopped):\n" + "\n".join(out))
            if line == f"@@step-{n}-done":
                self.transcript += out
                return "\n".join(out)
            out.append(line)

    def close(self) -> None:
        """SIGTERM to the shell's process group (the services and the fleet it started in the
        background); SIGKILL what is still there after 20 s."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                self.proc.poll()  # reaps the shell: a zombie still counts as one of the group
                os.killpg(self.proc.pid, 0)  # raises once every process of the group is gone
                time.sleep(0.2)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        finally:
            self.reader.join(timeout=10)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path, broker: Mosquitto, database_url: str) -> None:
    steps = walkthrough_steps((ROOT / "README.md").read_text())
    assert sorted(steps) == [0, 1, 2, 3, 4, 5, 6]
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFLEET_")}
    env |= {
        "PATH": f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}",
        "MICROFLEET_DATABASE_URL": database_url,
        "MICROFLEET_MQTT_URL": broker.url,
        "MICROFLEET_MARK_DELAY_S": "1",  # ingest's commit marks after 1 s instead of 10: a shorter drain
        "COLUMNS": "160",
    }

    def count(sql: str) -> int:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(sql.encode()).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    shell = Shell(tmp_path, env)
    try:
        shell.run(0, steps[0], 30)
        assert '"key_id"' in (tmp_path / "walkthrough" / "trusted-keys.json").read_text()
        shell.run(1, steps[1], 60)
        shell.run(2, steps[2], 30)
        online = "select count(*) from devices where device_id like 'wt-%' and state = 'online'"
        wait_for(lambda: count(online) >= 19, 30, "the simulated fleet online")  # one flaps now and then

        out = shell.run(3, steps[3], 60)
        assert "home-starter v1: OK for mf-home-1" in out and "published to" in out
        applied = "select count(*) from device_events where event = 'protocol_applied'"
        wait_for(lambda: count(applied) >= 20, 30, "every simulated device to apply its protocol")
        assert count("select count(*) from device_events where event = 'protocol_rejected'") == 0

        out = shell.run(4, steps[4], 60)
        assert "1.1.0" in out

        wait_for(lambda: count("select count(*) from alerts where device_id like 'wt-%'") > 0, 40, "alerts")
        out = shell.run(5, steps[5], 30)
        acked = "select count(*) from alerts where state = 'acknowledged'"
        assert count(acked) == 1, out

        shell.run(6, steps[6], 90)
        report = json.loads((tmp_path / "walkthrough" / "loadtest.json").read_text())
        assert report["loss"] == 0 and report["latency_ms"]["n"] > 0
        assert report["sent_messages"] == report["stored_messages"] > 0
    finally:
        shell.close()
