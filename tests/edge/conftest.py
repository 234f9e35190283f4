"""Helpers for edge tests: a fast agent config, a plain MQTT subscriber that records what arrives, and
`marks`: a CommitPeer (tests/edge/marker.py) that plays the cloud's commit marks on the test broker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contract.codec import decode_uplink
from contract.messages import Status, UplinkMessage
from contract.mqtturl import parse_mqtt_url
from edge.config import EdgeConfig
from tests.edge.marker import CommitPeer
from tests.support.services import Mosquitto


def fast_config(tmp_path: Path, url: str, device_id: str | None = None, **kw: object) -> EdgeConfig:
    values: dict[str, object] = {
        "device_id": device_id or f"dev-{uuid.uuid4().hex[:8]}",
        "data_dir": tmp_path / "edge",
        "mqtt_url": url,
        "outbox_sync": "normal",
        "samples_per_batch": 10,
        "keepalive_s": 5,
        "connect_timeout_s": 3.0,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
        "session_expiry_s": 0,
        # the end-to-end acknowledgement (ack_mode "committed", the default): re-send after 2 s uncovered
        "commit_timeout_s": 2.0,
        "commit_timeout_max_s": 10.0,
    }
    values.update(kw)
    return EdgeConfig(**values)  # type: ignore[arg-type]


@dataclass
class Collector:
    """Subscribes to one device's uplinks with a persistent session and reconnects by itself."""

    url: str
    device_id: str
    received: list[tuple[str, bytes, UplinkMessage]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    syncs: int = 0

    async def run(self) -> None:
        addr = parse_mqtt_url(self.url)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        ident = f"collector-{uuid.uuid4().hex[:8]}"
        while True:
            try:
                async with aiomqtt.Client(
                    addr.host,
                    addr.port,
                    identifier=ident,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    properties=props,
                ) as client:
                    await client.subscribe(f"mf/v1/{self.device_id}/up/#", qos=1)
                    self.subscribed.set()
                    async for m in client.messages:
                        payload = bytes(m.payload)  # type: ignore[arg-type]
                        topic = str(m.topic)
                        if topic.endswith("/up/sync"):  # SyncRequests are not telemetry
                            self.syncs += 1
                            continue
                        msg = decode_uplink(topic, payload, datetime.now(UTC) + timedelta(seconds=5))
                        self.received.append((topic, payload, msg))
                        self.changed.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    def messages(self) -> list[UplinkMessage]:
        return [m for _, _, m in self.received]

    def data(self) -> list[UplinkMessage]:
        return [m for m in self.messages() if not isinstance(m, Status)]

    def statuses(self) -> list[Status]:
        return [m for m in self.messages() if isinstance(m, Status)]

    async def wait_for(self, predicate: Callable[[], bool], deadline_s: float = 15.0) -> None:
        async with asyncio.timeout(deadline_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


class ThreadCollector:
    """A paho subscriber on its own network thread: keeps up with a fast publisher even while the event
    loop is busy (a lagging subscriber makes mosquitto 2.0's per-client queue slow)."""

    def __init__(self, url: str, topic_filter: str) -> None:
        import threading

        import paho.mqtt.client as mqtt

        addr = parse_mqtt_url(url)
        self.raw: list[tuple[str, bytes]] = []
        self.syncs = 0
        self._loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if addr.username:
            self._client.username_pw_set(addr.username, addr.password)
        self._client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(addr.host, addr.port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("collector could not subscribe")

    def _on_message(self, client: object, userdata: object, m: Any) -> None:
        if m.topic.endswith("/up/sync"):  # SyncRequests are not telemetry: counted apart
            self.syncs += 1
            return
        self.raw.append((m.topic, bytes(m.payload)))
        self._loop.call_soon_threadsafe(self.changed.set)

    async def wait_for(self, predicate: Callable[[], bool], deadline_s: float = 15.0) -> None:
        async with asyncio.timeout(deadline_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def messages(self) -> list[UplinkMessage]:
        now = datetime.now(UTC) + timedelta(seconds=5)
        return [decode_uplink(t, p, now) for t, p in list(self.raw)]

    def has_every_seq(self, next_seq: Mapping[str, int]) -> bool:
        """Every device's messages 0 .. next_seq - 1 have arrived (duplicates allowed)."""
        got: dict[str, set[int]] = {}
        for m in self.messages():
            got.setdefault(m.device_id, set()).add(m.seq)
        return all(set(range(n)) <= got.get(d, set()) for d, n in next_seq.items())

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def collect() -> Callable[[str, str], contextlib.AbstractAsyncContextManager[Collector]]:
    @contextlib.asynccontextmanager
    async def _collect(url: str, device_id: str) -> AsyncIterator[Collector]:
        c = Collector(url, device_id)
        task = asyncio.create_task(c.run())
        try:
            async with asyncio.timeout(10):
                await c.subscribed.wait()
            yield c
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return _collect


@pytest.fixture
def marks(broker: Mosquitto) -> Iterator[CommitPeer]:
    """The cloud's part of the end-to-end acknowledgement, played by a test peer on the test broker."""
    with CommitPeer(broker.url) as peer:
        yield peer
