"""`microfleet alerts run` stops promptly on SIGTERM, under load: uplinks keep arriving, notices nobody
subscribes to (answered 0x10) are being retried, the profile poller runs, and the batch in hand is stuck
behind a lock another session holds (a slow database). It used to take over 30 s: the engine was joined
for up to 30 s, then the gate poller for 10 s and the delivery worker for 15 s, one after the other. Now
every worker is signalled at once and all are joined within one short deadline; a batch that cannot
commit in time is left unacknowledged (the broker keeps it, as after a crash) and named in the log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from cloud.db.migrate import migrate
from tests.cloud.test_alerts_engine_support import Uplinks, overuse_days, query, wait_for
from tests.support.services import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
PROMPT_S = 8.0  # the engine gives its batch 3 s (cloud.alerts.service.STOP_S)


def test_sigterm_under_load_exits_0_within_a_few_seconds(broker: Mosquitto, database_url: str) -> None:
    dsn = database_url
    migrate(dsn)
    now = datetime.now(UTC)
    devices = [f"stop-{i}" for i in range(60)]
    traffic = [m for d in devices for m in overuse_days(d, now, range(-6, 0))]
    env = {
        **os.environ,
        "MICROFLEET_DATABASE_URL": dsn,
        "MICROFLEET_MQTT_URL": broker.url,
        "MICROFLEET_ALERT_CONSUMER_ID": "alerts-stop",
        "MICROFLEET_ALERT_BATCH_MAX_MESSAGES": "20",
        "MICROFLEET_ALERT_QUIET_START": "00:00",
        "MICROFLEET_ALERT_QUIET_END": "00:00",
        "MICROFLEET_ALERT_NOTICE_MAX_AGE_S": str(8 * 24 * 3600),
        "MICROFLEET_ALERT_GATE_POLL_S": "0.2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud.alerts", "run"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    subscribed = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "subscribed to" in line:
                subscribed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    uplinks = Uplinks(broker.url)
    stop_sending = threading.Event()

    def send_forever() -> None:
        while not stop_sending.is_set():
            uplinks.send(traffic[:200])  # the engine dedups by seq: the same traffic is load, not new work

    sender = threading.Thread(target=send_forever, daemon=True)
    try:
        assert subscribed.wait(15), "engine did not subscribe:\n" + "".join(lines)
        uplinks.send(traffic)
        sender.start()
        # notices are raised and, with no device subscribed, answered 0x10 and retried
        wait_for(
            lambda: query(dsn, "select count(*) from notice_outbox where attempts > 0")[0][0] > 0,
            30,
            "a notice tried",
        )
        # another session holds a lock the engine's next batch needs (new devices: their rows are inserted)
        with psycopg.connect(dsn) as blocker:
            blocker.execute("lock table alert_devices in exclusive mode")
            uplinks.send([m for m in overuse_days("stop-new", now, range(-6, 0))])
            wait_for(
                lambda: (
                    query(
                        dsn,
                        "select count(*) from pg_stat_activity where datname = current_database() "
                        "and wait_event_type = 'Lock'",
                    )[0][0]
                    > 0
                ),
                15,
                "the engine's batch waiting on the lock",
            )
            assert proc.poll() is None
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            took = time.monotonic() - started
            blocker.rollback()
    finally:
        stop_sending.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if sender.is_alive():
            sender.join(15)
        uplinks.close()
    reader.join(5)
    out = "".join(lines)
    assert code == 0, out
    assert took < PROMPT_S, f"took {took:.1f} s to exit after SIGTERM:\n{out[-3000:]}"
    stuck = [line for line in lines if "threads still running" in line]
    assert stuck and "alerts-engine" in stuck[0], "the stuck batch is not named:\n" + out[-3000:]
