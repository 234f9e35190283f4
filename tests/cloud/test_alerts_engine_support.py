"""Helpers of the alert-engine tests: contract traffic, a device stand-in, a movable clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from cloud.alerts.config import AlertConfig
from contract import topics
from contract.codec import decode_downlink, encode
from contract.messages import (
    DeviceEvent,
    EndReason,
    EventType,
    Notice,
    SafetyGate,
    Sample,
    SampleBatch,
    SessionEnd,
    SessionStart,
    SessionSummary,
    UplinkMessage,
    Zone,
    kind_of,
)


class Clock:
    """A clock that ticks in real time from a chosen instant, and can be moved (`set`, `advance`)."""

    def __init__(self, now: datetime) -> None:
        self._lock = threading.Lock()
        self.set(now)

    def __call__(self) -> datetime:
        with self._lock:
            return self._base + timedelta(seconds=time.monotonic() - self._t0)

    def set(self, now: datetime) -> None:
        with self._lock:
            self._base, self._t0 = now, time.monotonic()

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._base += delta


def wire(m: UplinkMessage) -> tuple[str, bytes]:
    return topics.uplink(m.device_id, kind_of(m)), encode(m)


def session(
    device_id: str,
    sid: str,
    start: datetime,
    seq0: int,
    *,
    active_s: float = 300.0,
    currents: tuple[float, ...] = (200.0,) * 5,
    tz_offset_min: int = 0,
) -> list[UplinkMessage]:
    """A short valid session: start, one batch of 1 Hz samples, end with a summary."""
    samples = tuple(
        Sample(start + timedelta(seconds=i), c, 5.0, 8000.0, True, Zone.CHEEK_L, 2)
        for i, c in enumerate(currents)
    )
    end = start + timedelta(seconds=active_s)
    summary = SessionSummary(
        duration_on_s=active_s,
        duration_active_s=active_s,
        samples=len(samples),
        level_start=2,
        level_max=2,
        current_ua_mean=200.0,
        current_ua_p95=200.0,
        current_ua_max=max(currents),
    )
    return [
        SessionStart(
            device_id=device_id,
            seq=seq0 + 1,
            ts=start,
            session_id=sid,
            started_at=start,
            level=2,
            tz_offset_min=tz_offset_min,
        ),
        SampleBatch(device_id=device_id, seq=seq0 + 2, ts=samples[-1].t, session_id=sid, samples=samples),
        SessionEnd(
            device_id=device_id,
            seq=seq0 + 3,
            ts=end,
            session_id=sid,
            started_at=start,
            ended_at=end,
            end_reason=EndReason.USER,
            summary=summary,
        ),
    ]


def overuse_days(device_id: str, today_noon: datetime, days: range) -> list[UplinkMessage]:
    """One 5-minute session per day at 09:00 UTC, `days` relative to today: O5 (days per week) only."""
    out: list[UplinkMessage] = []
    for k in days:
        start = today_noon.replace(hour=9) + timedelta(days=k)
        out += session(device_id, f"{device_id}-d{k}", start, 3 * (k + 100))
    return out


class FakeDevice:
    """Stands in for the edge agent: subscribes to its downlinks, and answers each notice with
    NOTICE_SHOWN and NOTICE_ACK DeviceEvents (what the real agent must do)."""

    def __init__(self, url: str, device_id: str, clock: Callable[[], datetime], ack: bool = True) -> None:
        self.device_id, self.clock, self.ack = device_id, clock, ack
        self.notices: list[Notice] = []
        self.gates: list[SafetyGate] = []
        self.changed = threading.Condition()
        self.seq = 10_000
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"dev-{device_id}", protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topics.downlink_filter(device_id), qos=1)
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert subscribed.wait(10), "device stand-in could not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        down = decode_downlink(msg.topic, bytes(msg.payload))
        with self.changed:
            if isinstance(down, Notice):
                self.notices.append(down)
            elif isinstance(down, SafetyGate):  # commit marks are ingest's, not the engine's
                self.gates.append(down)
            self.changed.notify_all()
        if isinstance(down, Notice) and self.ack:
            for ev in (EventType.NOTICE_SHOWN, EventType.NOTICE_ACK):
                self.seq += 1
                e = DeviceEvent(
                    device_id=self.device_id,
                    seq=self.seq,
                    ts=self.clock(),
                    event=ev,
                    at=self.clock(),
                    detail=down.notice_id,
                )
                self.client.publish(*wire(e), qos=1)

    def wait(self, predicate: Callable[[FakeDevice], bool], timeout: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: predicate(self), timeout), (
                f"device {self.device_id}: condition not met; notices={self.notices} gates={self.gates}"
            )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Uplinks:
    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-pub", protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.connect(host, int(port))
        self.client.loop_start()

    def send(self, messages: list[UplinkMessage]) -> None:
        infos = [self.client.publish(*wire(m), qos=1) for m in messages]
        for i in infos:
            i.wait_for_publish(10)
            assert i.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def query(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql, args)
        return cur.fetchall() if cur.description else []


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not met within {timeout} s")


def engine_config(broker_url: str, dsn: str, consumer_id: str = "alerts-t1", **kw: Any) -> AlertConfig:
    base: dict[str, Any] = {
        "database_url": dsn,
        "mqtt_url": broker_url,
        "consumer_id": consumer_id,
        "quiet_start": dtime(0, 0),
        "quiet_end": dtime(0, 0),
        "timer_s": 0.1,
        "gate_poll_s": 0.2,
        "batch_max_delay_s": 0.01,
    }
    base.update(kw)
    return AlertConfig(**base)
