"""`microfleet sim --load` (what the compose simulator runs): sessions back to back from now in real time,
so device time is wall time and latency is real; SIGTERM (`docker stop`) ends the sessions, drains the
outboxes through the cloud's commit marks and exits 0. Real broker, real ingest, scratch database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from cli.compose_loadtest import expected_from_stored
from cli.loadtest import loss_by_device, stored_seqs
from cloud.ingest.service import IngestService
from tests.cloud.test_api_support import wait_for
from tests.support.services import ROOT, Mosquitto

DEVICES = 3


def _rows(dsn: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql.encode()).fetchall()


def test_sim_load_streams_wall_time_data_and_drains_on_sigterm(
    tmp_path: Path, broker: Mosquitto, database_url: str, ingest: IngestService
) -> None:
    sim = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "sim", "--load", "--devices", str(DEVICES)],
        env=os.environ
        | {
            "MICROFLEET_MQTT_URL": broker.url,
            "MICROFLEET_EDGE_DATA_DIR": str(tmp_path / "d"),
            "COLUMNS": "160",
        },
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # every device in a session at once (not at its persona's morning hour), batches of samples
        sessions = "select count(distinct device_id) from sessions"
        batches = "select count(*) from uplink_log where kind = 'samples'"
        wait_for(lambda: _rows(database_url, sessions)[0][0] == DEVICES, 20, "a session on every device")
        wait_for(lambda: int(_rows(database_url, batches)[0][0]) >= DEVICES, 30, "sample batches stored")
    finally:
        sim.send_signal(signal.SIGTERM)
        out, _ = sim.communicate(timeout=90)
    assert sim.returncode == 0, out  # exit 0: every outbox drained (committed by ingest)
    # device time is wall time: each data message stored a little after it was sent, never before
    ((lo, hi),) = _rows(
        database_url,
        "select min(extract(epoch from stored_at - sent_at)), max(extract(epoch from stored_at - sent_at)) "
        "from uplink_log where kind <> 'status'",
    )
    assert 0 <= float(lo) <= float(hi) < 15, (lo, hi)  # type: ignore[arg-type]
    # the open sessions were ended on SIGTERM, and nothing the devices created is missing
    ended = "select count(*) from sessions where ended_at is not null"
    assert _rows(database_url, ended)[0][0] >= DEVICES
    with psycopg.connect(database_url) as conn:
        seqs, _dups = stored_seqs(conn, "sim")
    assert len(seqs) == DEVICES and loss_by_device(expected_from_stored(seqs), seqs) == {}
