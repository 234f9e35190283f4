"""A TEST PEER that plays the cloud's part of the end-to-end acknowledgement, honestly but without a
database: it subscribes to every uplink on a real broker, and for each device sends CommitMarks
(`mf/v1/<id>/down/committed`, QoS 1) for the contiguous seqs it has received, counting everything below
a floor the device reported in a SyncRequest as settled (contract/messages.py CommitMark, SyncRequest).

Like ingest it batches: advanced marks go out every `delay_s`, and at once to a device that asked with a
SyncRequest. `hold()` stops marks (the cloud is slow or down), `release()` sends them again, and
`send_mark()` publishes any mark (a mark from the future, for a test). It is not the cloud (cloud/ingest
is): tests of the agent use it so they need no PostgreSQL.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contract.codec import decode_sync, encode
from contract.messages import CommitMark
from contract.mqtturl import parse_mqtt_url
from contract.topics import Downlink, Uplink, downlink, parse_uplink


class _Seq(msgspec.Struct):
    seq: int


_seq_of = msgspec.json.Decoder(_Seq)


class CommitPeer:
    def __init__(self, url: str, *, topic_filter: str = "mf/v1/+/up/#", delay_s: float = 0.05) -> None:
        addr = parse_mqtt_url(url)
        self.url = url
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self._held = False
        self.received: dict[str, set[int]] = {}
        self.through: dict[str, int] = {}  # the mark each device has earned
        self.sent_mark: dict[str, int] = {}  # the last mark sent to it
        self.floor: dict[str, int] = {}
        self.syncs: dict[str, int] = {}
        self.marks_sent = 0
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"commit-peer-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if addr.username:
            self._client.username_pw_set(addr.username, addr.password)
        self._client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 2)
        self._client.connect(addr.host, addr.port, clean_start=False, properties=props)
        self._client.loop_start()
        self._ticker = threading.Thread(target=self._tick, name="commit-peer-tick", daemon=True)
        self._ticker.start()
        if not self._subscribed.wait(10):
            self.close()
            raise TimeoutError("the commit peer could not subscribe")

    # -- what the cloud does ---------------------------------------------------------------------------

    def _on_message(self, client: object, userdata: object, m: Any) -> None:
        topic, payload = m.topic, bytes(m.payload)
        device, kind = parse_uplink(topic)
        with self._lock:
            if kind is Uplink.SYNC:
                req = decode_sync(topic, payload, datetime.now(UTC) + timedelta(days=365))
                self.floor[device] = max(self.floor.get(device, 0), req.floor)
                self.syncs[device] = self.syncs.get(device, 0) + 1
                self._advance(device)
                self._send(device, force=True)
                return
            self.received.setdefault(device, set()).add(_seq_of.decode(payload).seq)
            self._advance(device)

    def _advance(self, device: str) -> None:
        got, floor = self.received.get(device, set()), self.floor.get(device, 0)
        t = self.through.get(device, -1)
        while t + 1 in got or t + 1 < floor:
            t += 1
        self.through[device] = t

    def _send(self, device: str, *, force: bool = False) -> None:
        through = self.through.get(device, -1)
        if self._held or (not force and through <= self.sent_mark.get(device, -1)):
            return
        self.sent_mark[device] = through
        mark = CommitMark(device_id=device, ts=datetime.now(UTC), through=through)
        self._client.publish(downlink(device, Downlink.COMMITTED), encode(mark), qos=1)
        self.marks_sent += 1

    def _tick(self) -> None:
        while not self._stop.wait(self.delay_s):
            with self._lock:
                for device in list(self.through):
                    self._send(device)

    # -- test controls ---------------------------------------------------------------------------------

    def hold(self) -> None:
        """Send no mark until release() (the cloud is slow)."""
        with self._lock:
            self._held = True

    def release(self) -> None:
        with self._lock:
            self._held = False
            for device in list(self.through):
                self._send(device, force=True)

    def send_mark(self, device: str, through: int) -> None:
        """Publish a mark as it is (e.g. from the future)."""
        mark = CommitMark(device_id=device, ts=datetime.now(UTC), through=through)
        self._client.publish(downlink(device, Downlink.COMMITTED), encode(mark), qos=1).wait_for_publish(5)

    def has_every_seq(self, next_seq: dict[str, int]) -> bool:
        with self._lock:
            return all(set(range(n)) <= self.received.get(d, set()) for d, n in next_seq.items())

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(5)
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> CommitPeer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
