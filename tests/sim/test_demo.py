"""`microfleet demo` (= `make demo`): ends within its time budget, prints plain progress lines when its
output is not a terminal, and keeps its exactly-once check on what the fleet sent."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import time
import urllib.request

from cli.demo import DEMO_BUDGET_S, DemoBudget, demo
from tests.support.services import ROOT, Mosquitto


def test_a_budgeted_demo_prints_progress_without_a_terminal_and_checks_exactly_once(
    broker: Mosquitto, database_url: str
) -> None:
    """10 simulated days do not fit in 12 s: the fleet stops at the day it reached, the outboxes drain,
    and every message it sent is in the database exactly once. stdout is a pipe, not a terminal."""
    t0 = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--devices", "12", "--days", "10", "--budget", "12"],
        env=os.environ | {"MICROFLEET_DATABASE_URL": database_url, "MICROFLEET_MQTT_URL": broker.url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    took = time.monotonic() - t0
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    progress = re.findall(r"^\[\s*\d+ s\] (\w+): day", out, re.MULTILINE)
    assert len(progress) >= 2 and "living" in progress, out
    assert "every message is in the database exactly once" in out
    assert "stopped at the time budget" in out
    assert re.search(r"outbox depth at the end\s*│?\s*0", out), out
    assert took < 12 + 25, f"the demo took {took:.0f} s on a 12 s budget"


def test_every_service_of_the_demo_serves_live_metrics_while_it_runs(
    broker: Mosquitto, database_url: str
) -> None:
    """issue 14: `curl` on each service's metrics endpoint shows live figures while the demo runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "demo", "--devices", "6", "--days", "3", "--budget", "12"],
        env=os.environ | {"MICROFLEET_DATABASE_URL": database_url, "MICROFLEET_MQTT_URL": broker.url},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        urls: dict[str, str] = {}
        for line in proc.stdout:
            if line.startswith("metrics"):
                urls = dict(re.findall(r"(ingest|alerts) (http://\S+/metrics)", line))
                break
        assert set(urls) == {"ingest", "alerts"}, "the demo printed no metrics URLs"

        def figure(url: str, name: str) -> float:
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
            found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
            return float(found.group(1)) if found else 0.0

        deadline = time.monotonic() + 30
        live = {"ingest": 0.0, "alerts": 0.0}
        while time.monotonic() < deadline and not all(live.values()):
            live = {
                "ingest": figure(urls["ingest"], "microfleet_ingest_messages_total"),
                "alerts": figure(urls["alerts"], "microfleet_alerts_messages_total"),
            }
            time.sleep(0.2)
        assert all(v > 0 for v in live.values()), live
        rest, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_default_demo_is_planned_for_about_two_minutes() -> None:
    assert inspect.signature(demo).parameters["budget"].default == DEMO_BUDGET_S == 120
    plan = DemoBudget.of(DEMO_BUDGET_S)
    assert 85 <= plan.live_s <= 100 and plan.live_s + plan.drain_s == plan.total_s
    # the fleet lives until the living part is spent ...
    assert not plan.stop_living(elapsed_s=60, living_s=55, backlog=0, commit_rate=0)
    assert plan.stop_living(elapsed_s=plan.live_s, living_s=80, backlog=0, commit_rate=5000)
    # ... or sooner, when what the devices hold would not be committed in time at the cloud's rate
    assert plan.stop_living(elapsed_s=60, living_s=55, backlog=40_000, commit_rate=1000)
    assert not plan.stop_living(elapsed_s=60, living_s=55, backlog=4_000, commit_rate=1000)
    # and it always lives a little
    assert not plan.stop_living(elapsed_s=200, living_s=1, backlog=0, commit_rate=0)


def test_a_budget_too_short_for_a_demo_is_refused() -> None:
    try:
        DemoBudget(total_s=10, drain_s=25)
    except ValueError as exc:
        assert "too short" in str(exc)
    else:
        raise AssertionError("a 10 s budget with a 25 s drain was accepted")
