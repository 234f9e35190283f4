"""`microfleet ingest --processes N` supervises its consumers: a child that dies (SIGKILL here; a worker
thread's death exits with code 70) is started again with the same consumer id, takes back its broker
session and what the broker kept for it, and everything published is stored once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from bench._common import Publisher, fleet_traffic, wait_until
from cloud.db.migrate import migrate
from cloud.ingest.cli import RESTART_MAX_S, RESTART_MIN_S, STABLE_S, restart_delay
from tests.support.services import ROOT, Mosquitto


def test_restart_delay_doubles_while_a_child_keeps_dying_and_resets_once_it_ran_a_while() -> None:
    delays = [restart_delay(None, 0.5)]
    for _ in range(8):
        delays.append(restart_delay(delays[-1], 0.5))
    assert delays[:3] == [RESTART_MIN_S, 2 * RESTART_MIN_S, 4 * RESTART_MIN_S]
    assert max(delays) == RESTART_MAX_S
    assert restart_delay(RESTART_MAX_S, STABLE_S) == RESTART_MIN_S


def children(pid: int) -> dict[str, int]:
    """consumer id -> pid of the supervisor's children (Linux /proc)."""
    out: dict[str, int] = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"--consumer-id" in argv:
            out[argv[argv.index(b"--consumer-id") + 1].decode()] = int(child)
    return out


@pytest.mark.slow
def test_a_killed_consumer_is_started_again_with_its_id_and_nothing_is_lost(
    broker: Mosquitto, database_url: str, tmp_path: Path
) -> None:
    migrate(database_url)
    env = {
        **os.environ,
        "MICROFLEET_DATABASE_URL": database_url,
        "MICROFLEET_MQTT_URL": broker.url,
        "PYTHONPATH": str(ROOT),
    }
    log = open(tmp_path / "ingest.log", "wb")  # noqa: SIM115 - closed below
    sup = subprocess.Popen(
        [sys.executable, "-m", "cloud.ingest", "--processes", "2", "--prefix", "sup"],
        env=env,
        stdout=log,
        stderr=log,
    )
    traffic = fleet_traffic(20, 2, batches=3, samples_per_batch=5, prefix="sup-dev")
    half = len(traffic.messages) // 2
    try:
        wait_until(lambda: (tmp_path / "ingest.log").read_text().count(" subscribed to ") >= 2, 30)
        first = children(sup.pid)
        assert set(first) == {"sup-1", "sup-2"}
        pub = Publisher(broker.url, client_id="sup-pub")
        try:
            pub.publish_all(traffic.messages[:half])
            os.kill(first["sup-1"], signal.SIGKILL)  # a crash: its session keeps what it held
            pub.publish_all(traffic.messages[half:])  # every other one waits in sup-1's session
            wait_until(lambda: children(sup.pid).get("sup-1", first["sup-1"]) != first["sup-1"], 20)
            with psycopg.connect(database_url, autocommit=True) as conn:

                def stored() -> bool:
                    row = conn.execute("SELECT count(*) FROM uplink_log").fetchone()
                    return row is not None and row[0] == len(traffic.messages)

                wait_until(stored, 30, what="every message stored")
                samples = conn.execute("SELECT count(*) FROM samples").fetchone()
        finally:
            pub.close()
        assert samples == (traffic.samples,)
        assert "sup-1 exited with code -9; starting it again" in (tmp_path / "ingest.log").read_text()
        last = children(sup.pid)
        sup.send_signal(signal.SIGTERM)  # every child leaves its group, then the supervisor exits
        assert sup.wait(30) == 0
        assert children_gone(last)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait(10)
        log.close()


def children_gone(pids: dict[str, int]) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() for p in pids.values()):
            return True
        time.sleep(0.05)
    return False
