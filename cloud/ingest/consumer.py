"""The MQTT side of ingest: a paho-mqtt 2 client on an MQTT 5 shared subscription, with manual acks.

What we measured (mosquitto 2.0.11, paho-mqtt 2.2, this repo's mosquitto.conf, /tmp experiments kept in
bench/ingest.py's docstring):
- Receive Maximum vs `max_inflight_messages 0`: mosquitto honours the client's CONNECT Receive Maximum
  as its outgoing QoS 1 window. With ReceiveMaximum=8000 a consumer that never acks holds exactly 8000
  messages; with 100, exactly 100; with none set (MQTT 5 default 65535) it held all 12000 published.
  `max_inflight_messages 0` (unlimited) does not cap it, so a consumer can hold a whole batch unacked.
- Receive Maximum is also our back-pressure: the broker stops sending when that many are unacked, so
  the in-memory backlog is bounded without ever blocking paho's network thread (paho #657) - on_message
  only decodes and appends, it never waits.
- `client.ack(mid, 1)` from another thread is safe in paho 2: it queues the PUBACK under paho's
  `_out_packet_mutex` and wakes the loop through its socket pair; measured 260-450 k acks/s from the
  writer thread, every ack honoured by the broker (all messages eventually delivered and acked).
- Packet ids are per connection: after a reconnect the broker resends unacked messages (same session,
  DUP flag) and may reuse a packet id once it is acked. So a token carries the connection generation
  and acks of an older generation are dropped (the broker redelivers those messages; idempotent writes
  absorb the duplicate). Acking a stale id could otherwise acknowledge a different, uncommitted message.
- Stable client ids + clean_start=False + Session Expiry keep a member's unacked messages in its
  session across crashes and broker restarts (mosquitto #2662): restart a consumer with the same id.
- Broker limitation (mosquitto 2.0.11, reproduced): after a broker RESTART, a message published to
  the shared group before any member has reconnected is acknowledged to the publisher and then
  dropped (the restored shared subscription routes nothing to offline sessions until a member
  reconnects; without a restart, offline members' sessions do queue). Messages in flight before the
  restart are redelivered. Hence a short reconnect delay here, and the e2e test publishes after the
  reconnect; devices should keep an outbox window, and at scale use a broker with durable shared
  subscriptions (EMQX, HiveMQ).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contract import topics
from contract.mqtturl import parse_mqtt_url

log = logging.getLogger(__name__)


class AckToken(NamedTuple):
    generation: int
    mid: int
    qos: int


OnMessage = Callable[[str, bytes, AckToken], None]


class Consumer:
    def __init__(
        self,
        *,
        mqtt_url: str,
        client_id: str,
        group: str,
        on_message: OnMessage,
        receive_maximum: int = 8000,
        session_expiry_s: int = 7 * 24 * 3600,
        keepalive_s: int = 30,
        kinds: Sequence[topics.Uplink] | None = None,
    ) -> None:
        """`kinds`: the uplink kinds to receive (one shared filter each), or every uplink (one filter)."""
        self.addr = parse_mqtt_url(mqtt_url)
        self.client_id = client_id
        self.filters = (
            [topics.shared(group, topics.uplink_filter(k)) for k in kinds]
            if kinds
            else [topics.shared(group, topics.uplink_filter())]
        )
        # a session persisted before a change of kinds keeps its old filters: they are unsubscribed
        self._stale = [
            topics.shared(group, f)
            for f in [topics.uplink_filter(), *(topics.uplink_filter(k) for k in topics.Uplink)]
            if topics.shared(group, f) not in self.filters
        ]
        self.subscription = ", ".join(self.filters)
        self._on_message = on_message
        self._receive_maximum = receive_maximum
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._lock = threading.Lock()
        self._generation = 0
        self._connected = False
        self.connected_event = threading.Event()
        self.subscribed_event = threading.Event()
        self.acks_dropped = 0
        self.connects = 0
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        if self.addr.username:
            c.username_pw_set(self.addr.username, self.addr.password)
        if self.addr.tls:
            c.tls_set()
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_subscribe = self._handle_subscribe
        c.on_message = self._handle_message
        self.client = c

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry_s
        props.ReceiveMaximum = self._receive_maximum
        self.client.connect_async(
            self.addr.host, self.addr.port, keepalive=self._keepalive_s, clean_start=False, properties=props
        )
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect (the session and its unacked messages stay with the broker) and join paho's thread."""
        self.client.disconnect()
        self.client.loop_stop()

    # -- acks -------------------------------------------------------------------------------------------
    def ack(self, tokens: Iterable[AckToken]) -> int:
        """Acknowledge committed messages; returns how many acks were sent (stale ones are dropped)."""
        sent = 0
        with self._lock:
            generation, connected = self._generation, self._connected
            for token in tokens:
                if token.qos == 0:
                    continue
                if connected and token.generation == generation:
                    self.client.ack(token.mid, token.qos)
                    sent += 1
                else:
                    self.acks_dropped += 1
        return sent

    # -- paho callbacks (network thread) --------------------------------------------------------------
    def _handle_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("broker refused %s: %s", self.client_id, rc)
            return
        with self._lock:
            self._generation += 1
            self._connected = True
        self.connects += 1
        log.info("%s connected (session present: %s)", self.client_id, flags.session_present)
        if flags.session_present and self._stale:
            client.unsubscribe(self._stale)
        client.subscribe([(f, 1) for f in self.filters])
        self.connected_event.set()

    def _handle_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        with self._lock:
            self._generation += 1
            self._connected = False
        self.connected_event.clear()
        self.subscribed_event.clear()
        log.warning("%s disconnected (%s); paho reconnects", self.client_id, rc)

    def _handle_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reason_codes: Any, _p: Any) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("subscription %s refused: %s", self.subscription, reason_codes)
            return
        log.info("%s subscribed to %s", self.client_id, self.subscription)
        self.subscribed_event.set()

    def _handle_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # the generation is read without the lock: this thread is the only one that changes it
        self._on_message(msg.topic, bytes(msg.payload), AckToken(self._generation, msg.mid, msg.qos))
