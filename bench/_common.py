"""Shared helpers of the benchmarks and the ingest tests: valid contract traffic and a paho publisher.

Traffic is built with contract.messages and contract.codec.encode (no edge agent needed), with
per-device sequence numbers, so that a test or a benchmark can count what the database must hold.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contract import topics
from contract.codec import encode
from contract.messages import (
    DeviceEvent,
    DeviceState,
    EndReason,
    EventType,
    Sample,
    SampleBatch,
    SessionEnd,
    SessionStart,
    SessionSummary,
    Status,
    UplinkMessage,
    Zone,
    kind_of,
)
from contract.mqtturl import parse_mqtt_url

Message = tuple[str, bytes]


@dataclass
class Traffic:
    messages: list[Message]
    samples: int
    sessions: int
    events: int
    devices: int

    @property
    def uplinks(self) -> int:
        return len(self.messages)


def to_wire(m: UplinkMessage) -> Message:
    return topics.uplink(m.device_id, kind_of(m)), encode(m)


def session_traffic(
    device_id: str,
    *,
    start: datetime,
    seq0: int = 0,
    batches: int = 3,
    samples_per_batch: int = 10,
    session_id: str | None = None,
    with_events: bool = True,
) -> list[UplinkMessage]:
    """One device's session: status online, start, sample batches, an event, end."""
    sid = session_id or f"s-{device_id}-{int(start.timestamp())}"
    seq = seq0
    out: list[UplinkMessage] = []

    def nxt() -> int:
        nonlocal seq
        seq += 1
        return seq

    out.append(
        Status(
            device_id=device_id, seq=nxt(), ts=start, state=DeviceState.ONLINE, model="mini", fw_version="1.0"
        )
    )
    out.append(
        SessionStart(device_id=device_id, seq=nxt(), ts=start, session_id=sid, started_at=start, level=2)
    )
    t = start
    for b in range(batches):
        samples = []
        for i in range(samples_per_batch):
            t = start + timedelta(seconds=b * samples_per_batch + i)
            samples.append(Sample(t, 200.0 + i, 5.0, 8000.0 + i, True, Zone.CHEEK_L, 2))
        out.append(SampleBatch(device_id=device_id, seq=nxt(), ts=t, session_id=sid, samples=tuple(samples)))
    if with_events:
        out.append(
            DeviceEvent(
                device_id=device_id,
                seq=nxt(),
                ts=t,
                event=EventType.LEVEL_CHANGE,
                at=t,
                level_from=2,
                level_to=3,
            )
        )
    summary = SessionSummary(
        duration_on_s=float(batches * samples_per_batch),
        duration_active_s=float(batches * samples_per_batch),
        samples=batches * samples_per_batch,
        level_start=2,
        level_max=3,
        current_ua_mean=205.0,
        current_ua_max=209.0,
    )
    out.append(
        SessionEnd(
            device_id=device_id,
            seq=nxt(),
            ts=t,
            session_id=sid,
            started_at=start,
            ended_at=t,
            end_reason=EndReason.USER,
            summary=summary,
        )
    )
    return out


def fleet_traffic(
    devices: int,
    sessions_per_device: int = 1,
    *,
    batches: int = 3,
    samples_per_batch: int = 10,
    prefix: str = "dev",
    now: datetime | None = None,
    first_seq: int = 1,
) -> Traffic:
    """Interleaved traffic of `devices` devices (round robin), each with `sessions_per_device` sessions.
    `first_seq=0` numbers each device's messages as a real agent does (from 0), so that the cloud's commit
    marks advance; 1 keeps the numbering the older tests were written against."""
    now = now or datetime.now(UTC)
    base = now - timedelta(hours=2)
    per_device: list[list[UplinkMessage]] = []
    for d in range(devices):
        msgs: list[UplinkMessage] = []
        for s in range(sessions_per_device):
            start = base + timedelta(seconds=s * (batches * samples_per_batch + 60))
            msgs += session_traffic(
                f"{prefix}-{d}",
                start=start,
                seq0=len(msgs) + first_seq - 1,
                batches=batches,
                samples_per_batch=samples_per_batch,
            )
        per_device.append(msgs)
    interleaved: list[Message] = []
    for i in range(max(len(m) for m in per_device)):
        interleaved += [to_wire(m[i]) for m in per_device if i < len(m)]
    return Traffic(
        messages=interleaved,
        samples=devices * sessions_per_device * batches * samples_per_batch,
        sessions=devices * sessions_per_device,
        events=devices * sessions_per_device,
        devices=devices,
    )


class Publisher:
    """A paho MQTT 5 publisher at QoS 1 with a large in-flight window; `publish_all` waits for PUBACKs."""

    def __init__(self, url: str, client_id: str = "bench-pub", inflight: int = 1000) -> None:
        addr = parse_mqtt_url(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self._connected = threading.Event()
        self.client.on_connect = lambda *a: self._connected.set()
        self.client.connect(addr.host, addr.port)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError(f"publisher could not connect to {url}")

    def publish_all(self, messages: Iterable[Message], timeout: float = 60.0, qos: int = 1) -> float:
        """Publish and wait for every acknowledgement; returns the elapsed seconds."""
        t0 = time.perf_counter()
        infos = [self.client.publish(t, p, qos=qos) for t, p in messages]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError("the broker did not acknowledge every message in time")
        return time.perf_counter() - t0

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(predicate: object, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not met within {timeout}s")


def chunks(seq: Sequence[Message], n: int) -> list[Sequence[Message]]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]


class IngestProcess:
    """`python -m cloud.ingest` as a child process (stable consumer id), its log read by a thread.

    The benchmarks and the crash tests run the real consumer this way, so that it can be killed."""

    def __init__(self, mqtt_url: str, dsn: str, consumer_id: str, *args: str, **env: str) -> None:
        import os
        import subprocess
        import sys
        from pathlib import Path

        environ = {**os.environ, "MICROFLEET_DATABASE_URL": dsn, "MICROFLEET_MQTT_URL": mqtt_url, **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloud.ingest", "--consumer-id", consumer_id, "--no-housekeeping", *args],
            cwd=Path(__file__).resolve().parents[1],
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, name=f"log:{consumer_id}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def subscribed(self) -> bool:
        return any(" subscribed to " in line for line in self.log)

    def wait_subscribed(self, timeout_s: float = 30.0) -> None:
        wait_until(self.subscribed, timeout_s, what="consumer subscribed")

    def signal(self, signum: int) -> int:
        """Send `signum` (if still running); wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        code = self.proc.wait(30)
        self._reader.join(5)
        return code


def _publish_child(url: str, messages: list[Message], client_id: str) -> None:
    pub = Publisher(url, client_id=client_id, inflight=2000)
    pub.publish_all(messages, timeout=170)
    pub.close()


def publish_in_child(url: str, messages: list[Message], client_id: str) -> mp.process.BaseProcess:
    proc = mp.get_context("fork").Process(target=_publish_child, args=(url, messages, client_id), daemon=True)
    proc.start()
    return proc


def raw_broker_rate(port: int, url: str, messages: list[Message]) -> float:
    """The ceiling of a Python MQTT consumer on this machine: a bare paho subscriber (QoS 1, auto ack,
    no work per message) receiving a publisher child's messages through the broker: messages/s."""
    return raw_broker_figures(port, url, messages)[0]


def raw_broker_figures(port: int, url: str, messages: list[Message]) -> tuple[float, float]:
    """raw_broker_rate, and the CPU seconds per message of the bare subscriber's network thread (all of
    its work: paho's reads, parsing and PUBACKs), for "messages per second per core" comparisons."""
    n = len(messages)
    got = 0
    tid = 0
    done = threading.Event()
    ready = threading.Event()

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        nonlocal got, tid
        if not tid:
            tid = threading.get_native_id()
        got += 1
        if got >= n:
            done.set()

    def subscribed(*_a: Any) -> None:
        nonlocal tid
        tid = threading.get_native_id()
        ready.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw-sub", protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.on_subscribe = subscribed
    sub.on_connect = lambda c, *a: c.subscribe("mf/v1/+/up/#", qos=1)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    ready.wait(10)
    cpu0 = thread_cpu_seconds(tid)
    t0 = time.perf_counter()
    child = publish_in_child(url, messages, "bench-raw-pub")
    done.wait(170)
    elapsed = time.perf_counter() - t0
    cpu = thread_cpu_seconds(tid) - cpu0
    child.join(30)
    sub.disconnect()
    sub.loop_stop()
    if got < n:
        raise RuntimeError(f"raw subscriber got {got} of {n} messages")
    return n / elapsed, cpu / n


def thread_cpu_seconds(tid: int) -> float:
    """User + system CPU seconds of one thread of this process (Linux /proc), 0.0 if unknown."""
    try:
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc), 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
