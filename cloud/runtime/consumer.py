"""A manual-ack MQTT 5 consumer of shared subscriptions (ingest, alerts), on cloud.runtime.mqtt.

What we measured (mosquitto 2.0.11, paho-mqtt 2.2; see bench/ingest.py's docstring):
- the client's CONNECT Receive Maximum is the broker's outgoing QoS 1 window for it: a consumer that
  never acks holds exactly that many messages. It is our back-pressure: on_message only hands the
  message over, it never waits (paho #657), and the owner's backlog is bounded by it.
- `client.ack(mid, 1)` from another thread is safe in paho 2 (queued under paho's lock).
- packet ids are per connection: after a reconnect the broker resends unacked messages and may reuse an
  id. A token carries the connection generation; acks of an older generation are dropped (the broker
  redelivers those messages; idempotent writes absorb the duplicate).
- stable client ids + clean_start=False + Session Expiry keep a member's unacked messages across its
  crash and broker restarts (mosquitto #2662): restart a consumer with the same id.
- mosquitto does not restore SHARED subscriptions after a broker restart, even for a persisted session
  that reconnects with session_present: so the filters are subscribed on every connect. Until a member
  is back, the broker acknowledges a publish to the group with 0x10 and drops it (the edge's outbox
  re-sends what the commit mark does not cover).
- the broker hands each member of a group its turn, connected or not. A member that stops on purpose
  must `leave()`: unsubscribe, finish and ack what it holds, and end its session (Session Expiry 0 on
  DISCONNECT); otherwise every other message waits in its session (a week). A crash keeps the session.
"""

from __future__ import annotations

import gc
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt

from cloud.runtime.mqtt import MqttClient
from cloud.runtime.threads import guarded

log = logging.getLogger(__name__)


# Python's cyclic GC runs a young collection every 700 container allocations and, every 10 of those, an
# older one that walks everything that survived: a consumer allocates ~30 containers per message (paho's
# message and properties, the decoded structs, the row tuples) and holds a batch of thousands of them, so
# those walks took 13 % of the network thread's samples (py-spy, drain of 32,000 messages). Our code makes
# no reference cycles on the hot path (its garbage is freed by reference counting), so a consumer process
# collects rarely, and never walks what existed when it started (gc.freeze): measured +25-45 % drain
# throughput, -20 % CPU per message (docs/performance.md).
GC_THRESHOLDS = (20_000, 50, 1000)
_PUBACK_HEAD = (mqtt.PUBACK << 24) | (2 << 16)  # PUBACK, remaining length 2; the packet id below
_gc_relaxed = False


def relax_gc() -> None:
    """Once per process: rarer cyclic collections, and the start-up heap frozen out of them."""
    global _gc_relaxed
    if not _gc_relaxed:
        _gc_relaxed = True
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)


def parse_plain_publish(
    header: int, data: bytes | bytearray, v5: bool
) -> tuple[str, int, bytes, bool] | None:
    """(topic, packet id, payload, dup) of a QoS 1 PUBLISH packet without properties (MQTT 3.1.1, or 5
    with a zero property length), from its fixed header's first byte and its variable part; None for any
    other packet (QoS 0 or 2, properties, a topic that is not UTF-8, too short), left to paho."""
    if (header >> 1) & 3 != 1:
        return None
    try:
        end = 2 + ((data[0] << 8) | data[1])
        topic = bytes(data[2:end]).decode("utf-8")
        mid = (data[end] << 8) | data[end + 1]
        pos = end + 2
        if v5:
            if data[pos] != 0:
                return None
            pos += 1
    except (IndexError, UnicodeDecodeError):
        return None
    if not topic or mid == 0:
        return None
    return topic, mid, bytes(memoryview(data)[pos:]), bool(header & 0x08)


class BufferedReads:
    """paho reads each packet with a select() and 3 or more recv() calls (the type byte, each byte of the
    remaining length, the body), then parses it in Python. Installed on a consumer's client, paho's reads
    are served from a buffer filled by one recv() of up to CHUNK bytes; `loop_read` goes on while that
    buffer holds bytes (the socket would not wake select() for them), and hands every whole packet at
    the head of the buffer to `on_packet(first byte, variable part)` first, while paho is between packets:
    a packet it takes (True) never reaches paho, anything else is read by paho as before. A new socket (a
    reconnect) starts with an empty buffer. Uses paho 2's private `_sock_recv`, `_sock`, `_in_packet` and
    keepalive clock; the consumer installs it only where they exist."""

    CHUNK = 1 << 16

    def __init__(self, client: Any, on_packet: Callable[[int, bytes], bool] | None = None) -> None:
        self._client = client
        self._recv = client._sock_recv
        self._loop_read = client.loop_read
        self._on_packet = on_packet
        self._sock: object = None
        self._data = b""
        self._pos = 0
        self.recvs = 0  # recv() calls made (a figure for tests and profiles)
        self.taken = 0  # packets handed to on_packet and taken
        client._sock_recv = self.sock_recv
        client.loop_read = self.loop_read

    def sock_recv(self, bufsize: int) -> bytes:
        sock = self._client._sock
        if sock is not self._sock:
            self._sock, self._data, self._pos = sock, b"", 0
        if self._pos >= len(self._data):
            data: bytes = self._recv(self.CHUNK)  # raises as paho expects (BlockingIOError: nothing yet)
            self.recvs += 1
            if not data:
                return data  # the connection is closed
            self._data, self._pos = data, 0
        start = self._pos
        self._pos = min(start + bufsize, len(self._data))
        return self._data[start : self._pos]

    def buffered(self) -> int:
        return len(self._data) - self._pos if self._client._sock is self._sock else 0

    def loop_read(self, max_packets: int = 1) -> Any:
        rc = self._loop_read(max_packets)
        while rc == mqtt.MQTT_ERR_SUCCESS and self.buffered():
            if self._on_packet is not None and self._client._in_packet["command"] == 0 and self._take():
                continue
            rc = self._loop_read(1)
        return rc

    def _take(self) -> bool:
        """Hand the whole packets at the head of the buffer to on_packet until one is incomplete or not
        taken; True if the buffer is then empty (nothing left for paho)."""
        data, pos, end_of_data = self._data, self._pos, len(self._data)
        on_packet, taken = self._on_packet, 0
        assert on_packet is not None
        while pos < end_of_data:
            i, length, shift = pos + 1, 0, 0
            while i < end_of_data and shift <= 21:
                byte = data[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            else:
                break  # the remaining length is not whole yet (or malformed: paho says so)
            end = i + length
            if end > end_of_data or not on_packet(data[pos], data[i:end]):
                break
            pos = self._pos = end
            taken += 1
        if taken:
            self.taken += taken
            with self._client._msgtime_mutex:
                self._client._last_bytes_received = time.monotonic()
        return pos >= end_of_data


class AckToken(NamedTuple):
    generation: int
    mid: int
    qos: int


OnMessage = Callable[[str, bytes, AckToken], None]


class Consumer:
    """`filters`: the (shared) topic filters, subscribed at QoS 1 on every connect; `stale`: filters a
    persisted session may still hold from an earlier version, unsubscribed when the session is present."""

    def __init__(
        self,
        *,
        mqtt_url: str,
        client_id: str,
        filters: Sequence[str],
        on_message: OnMessage,
        stale: Sequence[str] = (),
        receive_maximum: int = 8000,
        session_expiry_s: int = 7 * 24 * 3600,
        keepalive_s: int = 30,
        ca_file: str | None = None,
    ) -> None:
        self.client_id = client_id
        self.filters = list(filters)
        self.subscription = ", ".join(self.filters)
        self._stale = [f for f in stale if f not in self.filters]
        self._on_message = on_message
        self.mqtt = MqttClient(
            mqtt_url,
            client_id,
            ca_file=ca_file,
            manual_ack=True,
            keepalive_s=keepalive_s,
            clean_start=False,
            session_expiry_s=session_expiry_s,
            receive_maximum=receive_maximum,
        )
        self.client = self.mqtt.client
        self._lock = threading.Lock()
        self._generation = 0
        self._connected = False
        self._leaving = False
        self._outstanding = 0  # QoS > 0 messages of this connection handed over and not acked yet
        self._last_message = 0.0
        self._unsubacked = threading.Event()
        self._unsub_failure = ""
        self.connected_event = self.mqtt.connected
        self.subscribed_event = threading.Event()
        self.refused_event = threading.Event()  # the broker refused a subscription (see subscribe_error)
        self.subscribe_error = ""
        self.acks_dropped = 0
        self.redeliveries = 0  # messages received with the DUP flag (the broker sent them again)
        self.mqtt.on_up.append(self._up)
        self.mqtt.on_down.append(self._down)
        self.client.on_subscribe = guarded(f"MQTT {client_id} on_subscribe", self._handle_subscribe)
        self.client.on_unsubscribe = guarded(f"MQTT {client_id} on_unsubscribe", self._handle_unsubscribe)
        self.client.on_message = guarded(f"MQTT {client_id} on_message", self._handle_message)
        self.parsed_by_paho = 0  # messages the lean reader left to paho (see _install_lean_publish)
        self.reads: BufferedReads | None = None
        self._install_lean_publish()

    @property
    def connects(self) -> int:
        return self.mqtt.connects

    @property
    def redacted_url(self) -> str:
        return self.mqtt.redacted

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        relax_gc()
        self.mqtt.start()

    def stop(self) -> None:
        """Disconnect keeping the session (its unacked and queued messages stay with the broker)."""
        self.mqtt.stop()
        self.subscribed_event.clear()

    def leave(self, *, timeout_s: float = 15.0, quiet_s: float = 0.5) -> bool:
        """Leave the group for good (SIGTERM, scale-in): unsubscribe and wait for the UNSUBACK, keep
        handing over what the session still delivers until every message is acked and none came for
        `quiet_s`, then DISCONNECT with Session Expiry 0 (the broker discards the session). The owner must
        keep processing and acking meanwhile. If that does not finish within `timeout_s` (database down,
        connection lost), disconnect keeping the session, so that nothing held is lost; returns False."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._leaving = True
            generation, connected = self._generation, self._connected
        if not connected:
            log.warning("%s: not connected, cannot leave the group; the session is kept", self.client_id)
            self.stop()
            return False
        self._unsubacked.clear()
        rc, _mid = self.client.unsubscribe(self.filters)
        if rc != mqtt.MQTT_ERR_SUCCESS or not self._unsubacked.wait(max(0.0, deadline - time.monotonic())):
            log.warning("%s: no UNSUBACK; the session is kept", self.client_id)
            self.stop()
            return False
        if self._unsub_failure:
            log.error(
                "%s: the broker refused the unsubscribe (%s); session kept",
                self.client_id,
                self._unsub_failure,
            )
            self.stop()
            return False
        while time.monotonic() < deadline:
            with self._lock:
                same = self._connected and self._generation == generation
                idle = self._outstanding == 0 and time.monotonic() - self._last_message >= quiet_s
            if not same:
                break
            if idle:
                self.mqtt.stop(end_session=True)
                self.subscribed_event.clear()
                log.info("%s left the group %s: all acked, session ended", self.client_id, self.subscription)
                return True
            time.sleep(0.02)
        with self._lock:
            held = self._outstanding
        log.warning(
            "%s could not leave the group cleanly (%d messages not acked); the session is kept",
            self.client_id,
            held,
        )
        self.stop()
        return False

    # -- acks -------------------------------------------------------------------------------------------
    def ack(self, tokens: Iterable[AckToken]) -> int:
        """Acknowledge committed messages; returns how many acks were sent (stale ones are dropped)."""
        sent = 0
        with self._lock:
            generation, connected = self._generation, self._connected
            mids: list[int] = []
            for token in tokens:
                if token.qos == 0:
                    continue
                if connected and token.generation == generation:
                    if token.qos == 1:
                        mids.append(token.mid)
                    else:
                        self.client.ack(token.mid, token.qos)
                    sent += 1
                else:
                    self.acks_dropped += 1
            self._send_pubacks(mids)
            self._outstanding -= sent
        return sent

    def _send_pubacks(self, mids: list[int]) -> None:
        """The PUBACKs of `mids` as ONE queued write: paho's `ack` queues a packet per message, wakes its
        loop through a socket pair for each, and the loop sends each 4-byte PUBACK with its own send()
        (2 system calls and a Python packet per message). The bytes are the same (MQTT 3.1.1 and 5: type,
        remaining length 2, packet id; reason code 0 omitted); with a paho that lacks the private
        `_packet_queue` it falls back to one `ack` each. Called under self._lock, on this connection."""
        queue = getattr(self.client, "_packet_queue", None)
        if len(mids) < 2 or queue is None:
            for mid in mids:
                self.client.ack(mid, 1)
            return
        blob = struct.pack(f">{len(mids)}I", *[_PUBACK_HEAD | mid for mid in mids])
        queue(mqtt.PUBACK, blob, 0, 0)

    # -- network thread -------------------------------------------------------------------------------
    def _up(self, session_present: bool) -> None:
        with self._lock:
            self._generation += 1
            self._connected = True
            self._outstanding = 0
            leaving = self._leaving
        if leaving:
            return
        if session_present and self._stale:
            self.client.unsubscribe(self._stale)
        self.client.subscribe([(f, 1) for f in self.filters])

    def _down(self) -> None:
        with self._lock:
            self._generation += 1
            self._connected = False
            self._outstanding = 0
        self.subscribed_event.clear()

    def _handle_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reason_codes: Any, _p: Any) -> None:
        refused = [(f, str(rc)) for f, rc in zip(self.filters, reason_codes, strict=False) if rc.is_failure]
        if refused:
            self.subscribe_error = "; ".join(f"{f}: {rc}" for f, rc in refused)
            log.error("%s: the broker refused the subscription %s", self.client_id, self.subscribe_error)
            self.refused_event.set()
            return
        self.subscribe_error = ""
        log.info("%s subscribed to %s", self.client_id, self.subscription)
        self.subscribed_event.set()

    def _handle_unsubscribe(self, _c: mqtt.Client, _u: Any, mid: int, reason_codes: Any, _p: Any) -> None:
        if not self._leaving:
            return  # the stale filters of a persisted session
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        self._unsub_failure = ", ".join(bad)
        self._unsubacked.set()

    def _handle_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._deliver(msg.topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.dup))

    def _deliver(self, topic: str, payload: bytes, mid: int, qos: int, dup: bool) -> None:
        with self._lock:
            generation = self._generation
            if qos > 0:
                self._outstanding += 1
                if dup:
                    self.redeliveries += 1
            self._last_message = time.monotonic()
        self._on_message(topic, payload, AckToken(generation, mid, qos))

    def _install_lean_publish(self) -> None:
        """Read a plain QoS 1 PUBLISH (no MQTT 5 properties) here instead of in paho: paho builds an
        MQTTMessage, an MQTTMessageInfo and a Properties object per message, formats a debug line and
        walks its callback table under two locks, which was a third of the network thread's time
        (py-spy). Anything else (QoS 0 or 2, properties such as a topic alias, a topic that is not UTF-8,
        a malformed packet) goes to paho's own handler, which reads it as before (parsed_by_paho counts
        those). Uses paho 2's private `_handle_publish`/`_in_packet`/`_protocol`; without them, nothing
        changes."""
        c: Any = self.client
        paho_handler = getattr(c, "_handle_publish", None)
        if paho_handler is None or not hasattr(c, "_in_packet") or not hasattr(c, "_protocol"):
            return
        v5 = c._protocol == mqtt.MQTTv5
        deliver = guarded(f"MQTT {self.client_id} on_message", self._deliver)

        def take(header: int, body: bytes) -> bool:
            if header & 0xF0 != mqtt.PUBLISH:
                return False
            parsed = parse_plain_publish(header, body, v5)
            if parsed is None:
                return False
            topic, mid, payload, dup = parsed
            deliver(topic, payload, mid, 1, dup)
            return True

        def handle_publish() -> Any:
            packet = c._in_packet
            if take(packet["command"], packet["packet"]):
                return mqtt.MQTT_ERR_SUCCESS
            self.parsed_by_paho += 1
            return paho_handler()

        c._handle_publish = handle_publish
        if all(hasattr(c, a) for a in ("_sock_recv", "_sock", "loop_read", "_msgtime_mutex")):
            self.reads = BufferedReads(c, take)
