"""The MQTT link: connects (MQTT 5 or 3.1.1, to one broker or the next of a cluster: edge/connect.py),
announces the device, drains the outbox, listens for downlinks, and keeps every message until the cloud
has committed it (edge/README.md "Delivery guarantee").

On every connection:
  1. a retained last will `Status(offline)` is registered and a retained birth `Status(online)` is
     published on `mf/v1/<id>/up/status` (both carry the same seq: the seq at connect, see below);
  2. the device subscribes to `mf/v1/<id>/down/#` and hands each message to the handler registered for
     its kind (the last topic level); a handler that fails is logged with topic and payload, the others
     run on;
  3. (ack_mode "committed") a SyncRequest(floor, next_seq, epoch) goes to `mf/v1/<id>/up/sync` at QoS 1 (not
     stored in the outbox): the cloud answers with the device's CommitMark;
  4. the outbox is drained oldest-first at QoS 1 with at most `inflight` unacknowledged messages.
Any connection loss ends the connection's task group; the link waits a capped, fully jittered backoff
(edge/backoff.py) and starts again, re-sending every row still in the outbox from the start
(at-least-once: the cloud de-duplicates on natural keys). A fresh client per connection means paho keeps
no stale in-flight state.

When a row leaves the outbox. A PUBACK with reason 0x00 means the broker took the message, not that it
is stored: mosquitto acks 0x10 "no matching subscribers" and drops it when the ingest group has no live
member (after a broker restart), and a broker crash loses what it had not saved. So:
  - "committed" (the default): a PUBACK only marks the row sent (`LinkStats.sent`); rows leave when a
    CommitMark `through` covers them (`on_committed`: one DELETE of every seq <= through,
    `LinkStats.committed`). A mark at or beyond the outbox's next_seq belongs to an earlier life of
    this device id: ignored (logged, a SyncRequest asks for the right one). If the oldest sent row stays
    uncovered longer than the commit timeout (real loop time, edge/commits.py), a SyncRequest goes out and
    the drain rewinds: everything above the mark is sent again (`LinkStats.resent`); the timeout doubles
    up to `commit_timeout_max_s` while no mark advances and is reset when one does. When the outbox is
    `sync_fill_ratio` full with sent rows uncovered, a SyncRequest goes out (at most once per timeout).
  - "broker" (no microfleet cloud behind the broker): a row is deleted on its PUBACK 0x00 (deletes are
    batched per event-loop turn: one transaction).
In both modes an MQTT 5 PUBACK 0x10 or >= 0x80 means NOT TAKEN: counted (`LinkStats.not_taken`; `refused` for
>= 0x80, e.g. 0x87 Not authorized from an ACL), logged, the row stays and is sent again after the commit
timeout or on the next connection: a misconfigured ACL or an absent consumer delays data, it never
deletes it. (An MQTT 3.1.1 PUBACK has no reason code: only the commit mark tells, edge/connect.py.)

The birth's seq is reserved from the outbox counter and reused until a birth is acknowledged, so failed
connects do not burn numbers (a retained birth acked 0x10 is kept by the broker: that is success). On a
clean shutdown the offline status is published explicitly.
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

from contract.codec import decode_downlink, encode
from contract.messages import CommitMark, DeviceState, Status, SyncRequest
from contract.topics import Uplink, downlink_filter, uplink
from edge.backoff import Backoff
from edge.checked import CheckedClient, PublishRefused, taken
from edge.clock import Clock
from edge.commits import CommitTimer
from edge.config import EdgeConfig
from edge.connect import Brokers, new_client
from edge.outbox import Outbox, Row

__all__ = ["DownlinkHandler", "Link", "LinkState", "LinkStats", "PublishRefused"]

log = logging.getLogger(__name__)

DownlinkHandler = Callable[[str, bytes], Awaitable[None]]
CLOSE_TIMEOUT_S = 2.0


class LinkState(StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"


@dataclass(slots=True)
class LinkStats:
    state: LinkState = LinkState.DISCONNECTED
    connects: int = 0
    disconnects: int = 0
    sent: int = 0  # outbox rows the broker took (PUBACK 0x00); a row sent again counts again
    committed: int = 0  # outbox rows removed by commit marks (ack_mode "committed")
    not_taken: int = 0  # PUBACK 0x10 (no subscriber: dropped) or >= 0x80: the row stays, sent again
    refused: int = 0  # of those, >= 0x80 (e.g. 0x87 Not authorized)
    resent: int = 0  # rows published again (after a commit timeout or a reconnect)
    syncs: int = 0  # SyncRequests published
    marks: int = 0  # commit marks received (applied, or lower than one already applied)
    marks_ignored: int = 0  # marks at or beyond the outbox's next_seq (an earlier life of the device id)
    downlinks: int = 0
    subscribe_refused: int = 0  # SUBACKs >= 0x80 for the downlink filter (the connection is then ended)


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
        self._brokers = Brokers(config.mqtt_urls)
        self._status_topic = uplink(config.device_id, Uplink.STATUS)
        self._sync_topic = uplink(config.device_id, Uplink.SYNC)
        self._committed_mode = config.ack_mode == "committed"
        self._timer = CommitTimer(
            config.commit_timeout_s, config.commit_timeout_max_s, mark=outbox.committed_through
        )
        self._timer_wake = asyncio.Event()  # the timer's deadline moved, or a SyncRequest is wanted
        self._sync_wanted = False
        self._cursor = -1  # the drain's position: the highest seq handed to a publish in this pass
        self._pass = 0  # bumped when the drain rewinds (commit timeout)
        self._high_water = -1  # the highest seq ever handed to a publish (to count re-sends)
        self._quiet_not_taken = False  # one warning per connection, then the counter speaks
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
        """A message was stored: wake the drain loop (and ask for a mark if the outbox is filling up)."""
        self._wake.set()
        if self._committed_mode and self.connected.is_set():
            cfg, ob = self._cfg, self._outbox
            now = asyncio.get_running_loop().time()
            if self._timer.filling(
                ob.depth, ob.size_bytes, cfg.outbox_max_rows, cfg.outbox_max_bytes, cfg.sync_fill_ratio, now
            ):
                self._timer.synced(now)  # at most one per timeout, even before it is out
                self._want_sync()

    async def on_committed(self, topic: str, payload: bytes) -> None:
        """The handler for `down/committed`: apply a CommitMark (raises ContractError on a bad one)."""
        mark = decode_downlink(topic, payload)
        if not isinstance(mark, CommitMark):  # decode_downlink checks the kind against the topic
            raise TypeError(f"{type(mark).__name__} on {topic}")
        self.stats.marks += 1
        ob = self._outbox
        if mark.through >= ob.next_seq:
            self.stats.marks_ignored += 1
            log.warning(
                "%s: commit mark %d is at or beyond next seq %d (an earlier life of this device id?): "
                "ignored, asking for the right one",
                self._cfg.device_id,
                mark.through,
                ob.next_seq,
            )
            self._want_sync()
            return
        removed = ob.commit_through(mark.through)
        self.stats.committed += removed
        if self._timer.covered(mark.through):
            self._timer_wake.set()
        if removed and self._on_acked is not None:
            self._on_acked()

    @property
    def commit_timeout(self) -> float:
        """The current commit timeout (s of real time): doubles while no mark advances."""
        return self._timer.timeout

    def _want_sync(self) -> None:
        self._sync_wanted = True
        self._timer_wake.set()

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

    async def _serve(self, backoff: Backoff) -> None:
        if self._unacked_birth_seq is None:
            self._unacked_birth_seq = self._outbox.reserve_seq()
        seq = self._unacked_birth_seq
        self._rebirth.clear()
        ts = self._clock.now()  # birth and will share seq and ts (edge/README.md)
        will = self._status(DeviceState.OFFLINE, seq, ts)
        client = new_client(self._cfg, self._brokers.current, self._status_topic, will)
        client.pending_calls_threshold = self._cfg.inflight + 10  # our window bounds it; no warning spam
        try:
            async with client:
                self.stats.connects += 1
                self.stats.state = LinkState.CONNECTED
                await self._subscribe(client)
                # Every wait on this connection runs in its task group (the birth's PUBACK included): a
                # connection lost meanwhile ends the receive task and with it the whole group.
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._receive(client), name=f"link-rx:{self._cfg.device_id}")
                    tg.create_task(self._await_rebirth(), name=f"link-rebirth:{self._cfg.device_id}")
                    await self._announce(client, seq, ts, will, backoff)
                    tg.create_task(self._drain(client), name=f"link-tx:{self._cfg.device_id}")
                    tg.create_task(self._watch_commits(client), name=f"link-commit:{self._cfg.device_id}")
        finally:
            self._brokers.moved()  # the next connection tries the cluster's next node (edge/connect.py)

    async def _subscribe(self, client: CheckedClient) -> None:
        """Subscribe to the device's downlinks and read the SUBACK: a refused subscription (>= 0x80, in
        MQTT 5 and 3.1.1 alike) would leave the device deaf to its commit marks, protocols and notices on
        a connection that looks healthy, so it ends the connection (retried with backoff) instead."""
        granted = await client.subscribe(downlink_filter(self._cfg.device_id), qos=1)
        codes = [g if isinstance(g, int) else g.value for g in granted]
        if not codes or any(c >= 0x80 for c in codes):
            self.stats.subscribe_refused += 1
            raise aiomqtt.MqttError(f"the broker refused the downlink subscription (SUBACK {codes})")

    async def _announce(
        self, client: CheckedClient, seq: int, ts: datetime, will: bytes, backoff: Backoff
    ) -> None:
        """Publish the retained birth and wait for its PUBACK; then the connection counts as up."""
        await client.publish_checked(
            self._status_topic, self._status(DeviceState.ONLINE, seq, ts), retain=True
        )
        self._unacked_birth_seq = None
        self._will_payload = will
        self._client = client
        backoff.reset()
        self.connected.set()
        self._timer.reset()  # this connection sends the whole outbox again, from the start
        self._quiet_not_taken = False

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

    async def _drain(self, client: CheckedClient) -> None:
        window = asyncio.Semaphore(self._cfg.inflight)
        self._cursor = -1
        async with asyncio.TaskGroup() as tg:
            while True:
                self._wake.clear()
                this_pass = self._pass
                rows = self._outbox.peek(self._cfg.inflight, after=self._cursor)
                if not rows:
                    await self._wake.wait()
                    continue
                for row in rows:
                    await window.acquire()
                    if self._pass != this_pass:  # rewound while waiting for the window: peek again
                        window.release()
                        break
                    if row.seq <= self._high_water:
                        self.stats.resent += 1
                    else:
                        self._high_water = row.seq
                    tg.create_task(self._publish(client, row, window))
                    self._cursor = row.seq

    async def _publish(self, client: CheckedClient, row: Row, window: asyncio.Semaphore) -> None:
        # No timeout: a dead connection is detected by keepalive and ends the task group instead.
        try:
            code = await client.publish_code(row.topic, row.payload)
        finally:
            window.release()
        now = asyncio.get_running_loop().time()
        if code is not None and not taken(code.value):
            self.stats.not_taken += 1
            if code.is_failure:
                self.stats.refused += 1
            level = logging.DEBUG if self._quiet_not_taken else logging.WARNING
            self._quiet_not_taken = True
            log.log(
                level,
                "%s: the broker did not take seq %d (%s, %#x); it stays in the outbox and is sent again "
                "(further ones on this connection: LinkStats.not_taken)",
                self._cfg.device_id,
                row.seq,
                code,
                code.value,
            )
            if self._timer.sent(row.seq, now):
                self._timer_wake.set()
            return
        self.stats.sent += 1
        if self._committed_mode:
            if self._timer.sent(row.seq, now):
                self._timer_wake.set()
            return
        self._acked.append(row.seq)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acks)

    # -- the commit timer (edge/commits.py) ------------------------------------------------------------

    async def _sync(self, client: CheckedClient) -> None:
        """Publish a SyncRequest: the cloud answers with this device's CommitMark."""
        ob = self._outbox
        request = SyncRequest(
            device_id=self._cfg.device_id,
            ts=self._clock.now(),
            floor=ob.floor(),
            next_seq=ob.next_seq,
            epoch=ob.epoch,
        )
        self._sync_wanted = False
        code = await client.publish_code(self._sync_topic, encode(request))
        self.stats.syncs += 1
        if code is not None:
            log.info("%s: sync request not taken (%s, %#x)", self._cfg.device_id, code, code.value)

    async def _watch_commits(self, client: CheckedClient) -> None:
        """Send a SyncRequest when one is wanted; on a commit timeout, also rewind the drain. Starts with
        the connection's own SyncRequest (inside the task group: a connection lost meanwhile ends it)."""
        loop = asyncio.get_running_loop()
        if self._committed_mode:
            await self._sync(client)
        while True:
            self._timer_wake.clear()
            now = loop.time()
            if self._timer.due(now):
                self._resend(now)
                if self._committed_mode:
                    await self._sync(client)
                continue
            if self._sync_wanted:
                await self._sync(client)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(self._timer.deadline()):
                    await self._timer_wake.wait()

    def _resend(self, now: float) -> None:
        ob = self._outbox
        if ob.depth == 0:  # broker mode: what was not taken went later; nothing waits
            self._timer.reset()
            return
        log.info(
            "%s: sent messages not committed after %.0f s (mark %d, outbox %d): sending them again",
            self._cfg.device_id,
            self._timer.timeout,
            ob.committed_through,
            ob.depth,
        )
        self._timer.resent(now)
        self._cursor = -1  # the outbox holds only what no mark covers: all of it goes again
        self._pass += 1
        self._wake.set()

    def _flush_acks(self) -> None:
        self._flush_scheduled = False
        if not self._acked:
            return
        acked, self._acked = self._acked, []
        self._outbox.ack_many(acked)
        if self._on_acked is not None:
            self._on_acked()
