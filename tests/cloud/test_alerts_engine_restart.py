"""An alert engine process SIGKILLed mid-stream and restarted with the same id loses nothing and
duplicates nothing: its broker session redelivers what it had not acked, and its state in PostgreSQL
holds exactly what it had committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud.db.migrate import migrate
from tests.cloud.test_alerts_engine_support import Uplinks, overuse_days, query, wait_for
from tests.support.services import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class NoticeSink:
    """The devices' side of the notices: a subscription on every device's notice topic. A notice is sent
    only when the broker routes it to a subscriber (PUBACK 0x00; 0x10 means nobody got it)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="notice-sink", protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe("mf/v1/+/down/notice", qos=1)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert subscribed.wait(10), "the notice sink could not subscribe"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class EngineProcess:
    def __init__(self, broker: Mosquitto, dsn: str) -> None:
        env = {
            **os.environ,
            "MICROFLEET_DATABASE_URL": dsn,
            "MICROFLEET_MQTT_URL": broker.url,
            "MICROFLEET_ALERT_CONSUMER_ID": "alerts-kill",
            "MICROFLEET_ALERT_BATCH_MAX_MESSAGES": "20",
            "MICROFLEET_ALERT_QUIET_START": "00:00",
            "MICROFLEET_ALERT_QUIET_END": "00:00",
            "MICROFLEET_ALERT_NOTICE_MAX_AGE_S": str(8 * 24 * 3600),  # the sessions are days old
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloud.alerts", "run", "--no-gate"],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.subscribed = threading.Event()
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        assert self.subscribed.wait(15), "engine did not subscribe:\n" + "".join(self.lines)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "subscribed to" in line:
                self.subscribed.set()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)


def test_engine_killed_mid_stream_and_restarted_loses_none_duplicates_none(
    broker: Mosquitto, database_url: str
) -> None:
    dsn = database_url
    migrate(dsn)
    now = datetime.now(UTC)
    devices = [f"kill-{i}" for i in range(40)]
    traffic = [m for d in devices for m in overuse_days(d, now, range(-6, 0))]  # 6 past days each: O5
    uplinks = Uplinks(broker.url)
    sink = NoticeSink(broker)
    engine = EngineProcess(broker, dsn)
    try:
        uplinks.send(traffic)
        wait_for(lambda: query(dsn, "select count(*) from alert_history")[0][0] > 0, what="a first commit")
        engine.kill()
        stored = query(dsn, "select count(*) from alert_history")[0][0]
        assert stored < len(devices) * 6, "the engine finished before the kill: the test proves nothing"
        uplinks.send(traffic[: len(traffic) // 3])  # devices resend part of their outbox meanwhile
        engine = EngineProcess(broker, dsn)
        wait_for(
            lambda: query(dsn, "select count(*) from alerts where rule_id = 'O5'")[0][0] == len(devices),
            30,
            "every device's overuse alert",
        )
        wait_for(
            lambda: (
                query(dsn, "select count(*) from notice_outbox where sent_at is not null")[0][0]
                == len(devices)
            ),
            15,
            "notices sent",
        )
    finally:
        engine.stop()
        uplinks.close()
        sink.close()
    assert query(dsn, "select count(*) from alert_history") == [(len(devices) * 6,)]
    assert query(dsn, "select count(*), sum(count), min(count) from alerts") == [
        (len(devices), len(devices), 1)
    ]
    assert query(dsn, "select count(*) from alert_session_state") == [(0,)]
    assert query(dsn, "select count(*) from alert_transitions") == [(len(devices),)]
    assert query(dsn, "select count(*) from notice_outbox") == [(len(devices),)]
