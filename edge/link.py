"""The MQTT link: connects (MQTT 5), announces the device, drains the outbox, listens for downlinks.

On every connection:
  1. a retained last will `Status(offline)` is registered and a retained birth `Status(online)` is
     published on `mf/v1/<id>/up/status` (both carry the same seq: the seq at connect, see below);
  2. the device subscribes to `mf/v1/<id>/down/#` and hands each message to the handler registered for
     its kind (the last topic level); a handler that fails is logged with topic and payload, the others
     run on;
  3. the outbox is drained oldest-first at QoS 1 with at most `inflight` unacknowledged messages; a row is
     deleted only after its PUBACK (deletes are batched per event-loop turn: one transaction, not one
     per message).
Any connection loss ends the connection's task group; the link waits a capped, fully jittered backoff
(edge/backoff.py) and starts again, re-sending every row still in the outbox (at-least-once: the cloud
de-duplicates on natural keys). A fresh client per connection means paho keeps no stale in-flight state.

The birth's seq is reserved from the outbox counter and reused until a birth is acknowledged, so failed
connects do not burn numbers. On a clean shutdown the offline status is published explicitly.

A broker that refuses a message (MQTT 5 PUBACK with a failure reason code, e.g. 0x87 Not authorized
from an ACL) has NOT taken it: aiomqtt does not surface that code, so `_CheckedClient` records it and
the row stays in the outbox (counted in `LinkStats.refused`, logged, sent again on the next connection):
a misconfigured ACL delays data, it never deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from contract.codec import encode
from contract.messages import DeviceState, Status
from contract.mqtturl import parse_mqtt_url
from contract.topics import Uplink, downlink_filter, uplink
from edge.backoff import Backoff
from edge.clock import Clock
from edge.config import EdgeConfig
from edge.outbox import Outbox, Row

log = logging.getLogger(__name__)

DownlinkHandler = Callable[[str, bytes], Awaitable[None]]
INCOMING_QUEUE_MAX = 100
CLOSE_TIMEOUT_S = 2.0


class LinkState(StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"


class PublishRefused(aiomqtt.MqttError):
    """The broker answered a QoS 1 publish with a failure reason code: the message was not accepted."""

    def __init__(self, topic: str, reason: ReasonCode) -> None:
        super().__init__(f"broker refused publish to {topic}: {reason} ({reason.value:#x})")
        self.reason = reason


class _CheckedClient(aiomqtt.Client):
    """aiomqtt with the PUBACK reason code checked: `publish_checked` raises PublishRefused on a refusal."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._refusals: dict[int, ReasonCode] = {}

    def _on_publish(
        self, client: object, userdata: object, mid: int, reason_code: ReasonCode, properties: object
    ) -> None:
        if reason_code.is_failure:
            self._refusals[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)  # type: ignore[arg-type]

    async def publish_checked(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self._client.publish(topic, payload, 1, retain)
        if info.rc != 0:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if not info.is_published():
            confirmation = asyncio.Event()
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                await confirmation.wait()  # a dead connection ends the task group (keepalive)
        refused = self._refusals.pop(info.mid, None)
        if refused is not None:
            raise PublishRefused(topic, refused)


@dataclass(slots=True)
class LinkStats:
    state: LinkState = LinkState.DISCONNECTED
    connects: int = 0
    disconnects: int = 0
    published: int = 0  # PUBACKed messages from the outbox (re-sends after a reconnect count again)
    downlinks: int = 0
    refused: int = 0  # publishes the broker refused (kept in the outbox, retried next connection)


class Link:
    def __init__(
        self,
        config: EdgeConfig,
        outbox: Outbox,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        on_acked: Callable[[], None] | None = None,
        reported: Callable[[], tuple[str, int]] | None = None,
    ) -> None:
        self._cfg = config
        self._reported = reported  # (protocol_id, protocol_version) for the birth and will
        self._rebirth = asyncio.Event()
        self._outbox = outbox
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_acked = on_acked
        self._addr = parse_mqtt_url(config.mqtt_url)
        self._status_topic = uplink(config.device_id, Uplink.STATUS)
        self._handlers: dict[str, DownlinkHandler] = {}
        self._wake = asyncio.Event()
        self._acked: list[int] = []
        self._flush_scheduled = False
        self._client: aiomqtt.Client | None = None
        self._unacked_birth_seq: int | None = None
        self._will_payload: bytes | None = None
        self.stats = LinkStats()
        self.connected = asyncio.Event()

    # -- API for the agent ----------------------------------------------------------------------------

    def notify(self) -> None:
        """A message was stored: wake the drain loop."""
        self._wake.set()

    def on_downlink(self, kind: str, handler: DownlinkHandler) -> None:
        self._handlers[kind] = handler

    async def run(self) -> None:
        """Connect, serve, back off, forever (until cancelled)."""
        backoff = Backoff(self._cfg.reconnect_min_s, self._cfg.reconnect_max_s, random=self._rng.random)
        while True:
            self.stats.state = LinkState.CONNECTING
            try:
                await self._serve(backoff)
            except* (aiomqtt.MqttError, OSError) as group:
                log.info("%s: connection lost or refused: %s", self._cfg.device_id, group.exceptions[0])
            finally:
                self._client = None
                self.connected.clear()
                self.stats.state = LinkState.DISCONNECTED
                self._flush_acks()
            self.stats.disconnects += 1
            await self._clock.sleep(backoff.next_delay())

    def rebirth(self) -> None:
        """What the birth reports changed (a protocol was applied): reconnect, so that a new birth and a
        matching will (same seq and ts) carry it. A normal DISCONNECT: the broker does not send the will."""
        self._rebirth.set()

    async def _await_rebirth(self) -> None:
        await self._rebirth.wait()
        raise aiomqtt.MqttError("reconnecting to announce a new birth status")

    def abort(self) -> None:
        """Drop the connection as a power cut would: no DISCONNECT, so the broker publishes the last will."""
        client = self._client
        sock = client._client.socket() if client is not None else None  # paho's socket under aiomqtt
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def close(self) -> None:
        """Publish the offline status on a clean shutdown (best effort, bounded). Then cancel run()."""
        client, payload = self._client, self._will_payload
        if client is None or payload is None:
            return
        try:
            await client.publish(self._status_topic, payload, qos=1, retain=True, timeout=CLOSE_TIMEOUT_S)
        except aiomqtt.MqttError as exc:
            log.info("%s: could not publish offline status: %s", self._cfg.device_id, exc)

    # -- one connection ------------------------------------------------------------------------------

    def _status(self, state: DeviceState, seq: int, ts: datetime) -> bytes:
        cfg, ob = self._cfg, self._outbox
        protocol_id, protocol_version = self._reported() if self._reported else ("", 0)
        return encode(
            Status(
                device_id=cfg.device_id,
                seq=seq,
                ts=ts,
                state=state,
                model=cfg.model,
                hw_rev=cfg.hw_rev,
                fw_version=cfg.fw_version,
                protocol_id=protocol_id,
                protocol_version=protocol_version,
                outbox_depth=ob.depth,
                outbox_dropped=ob.dropped,
            )
        )

    def _new_client(self, will: bytes) -> _CheckedClient:
        cfg, addr = self._cfg, self._addr
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if cfg.session_expiry_s > 0:
            props.SessionExpiryInterval = cfg.session_expiry_s
        return _CheckedClient(
            addr.host,
            addr.port,
            username=addr.username,
            password=addr.password,
            identifier=cfg.device_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self._status_topic, will, qos=1, retain=True),
            clean_start=cfg.session_expiry_s == 0,
            properties=props,
            keepalive=cfg.keepalive_s,
            timeout=cfg.connect_timeout_s,
            max_inflight_messages=cfg.inflight,
            max_queued_incoming_messages=INCOMING_QUEUE_MAX,
            tls_params=aiomqtt.TLSParameters() if addr.tls else None,
        )

    async def _serve(self, backoff: Backoff) -> None:
        if self._unacked_birth_seq is None:
            self._unacked_birth_seq = self._outbox.reserve_seq()
        seq = self._unacked_birth_seq
        self._rebirth.clear()
        ts = self._clock.now()  # birth and will share seq and ts (edge/README.md)
        will = self._status(DeviceState.OFFLINE, seq, ts)
        client = self._new_client(will)
        client.pending_calls_threshold = self._cfg.inflight + 10  # our window bounds it; no warning spam
        async with client:
            self.stats.connects += 1
            self.stats.state = LinkState.CONNECTED
            await client.subscribe(downlink_filter(self._cfg.device_id), qos=1)
            await client.publish_checked(
                self._status_topic, self._status(DeviceState.ONLINE, seq, ts), retain=True
            )
            self._unacked_birth_seq = None
            self._will_payload = will
            self._client = client
            backoff.reset()
            self.connected.set()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive(client), name=f"link-rx:{self._cfg.device_id}")
                tg.create_task(self._drain(client), name=f"link-tx:{self._cfg.device_id}")
                tg.create_task(self._await_rebirth(), name=f"link-rebirth:{self._cfg.device_id}")

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            self.stats.downlinks += 1
            handler = self._handlers.get(topic.rsplit("/", 1)[-1])
            if handler is None:
                log.warning("%s: no handler for downlink %s", self._cfg.device_id, topic)
                continue
            try:
                await handler(topic, payload)
            except Exception:  # one bad downlink must not stop the others
                log.exception(
                    "%s: downlink handler failed on %s payload=%r", self._cfg.device_id, topic, payload[:200]
                )

    async def _drain(self, client: _CheckedClient) -> None:
        window = asyncio.Semaphore(self._cfg.inflight)
        cursor = -1
        async with asyncio.TaskGroup() as tg:
            while True:
                self._wake.clear()
                rows = self._outbox.peek(self._cfg.inflight, after=cursor)
                if not rows:
                    await self._wake.wait()
                    continue
                for row in rows:
                    await window.acquire()
                    tg.create_task(self._publish(client, row, window))
                    cursor = row.seq

    async def _publish(self, client: _CheckedClient, row: Row, window: asyncio.Semaphore) -> None:
        # No timeout: a dead connection is detected by keepalive and ends the task group instead.
        try:
            await client.publish_checked(row.topic, row.payload)
        except PublishRefused as exc:
            window.release()
            self.stats.refused += 1
            log.error("%s: %s; seq %d stays in the outbox", self._cfg.device_id, exc, row.seq)
            return
        window.release()
        self.stats.published += 1
        self._acked.append(row.seq)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._flush_scheduled = False
        if not self._acked:
            return
        acked, self._acked = self._acked, []
        self._outbox.ack_many(acked)
        if self._on_acked is not None:
            self._on_acked()
