"""One MQTT client for every cloud service: URL -> a configured paho-mqtt 2 client (MQTT 5, or 3.1.1 for
the NATS tier's MQTT gateway) with its network thread, TLS (with an optional CA file) and credentials, a
capped jittered reconnect backoff, a connection state, and a redacted URL for logs (never a password in a
log line).

MQTT 3.1.1 (`version="3.1.1"`, MICROFLEET_MQTT_VERSION; docs/decisions/nats-tier.md): no CONNECT or
DISCONNECT properties (no session expiry, no receive maximum: the broker keeps a session until a clean
connect), `clean_start` becomes clean_session, and a PUBACK carries no reason code (paho reports 0).

    conn = MqttClient(url, "alerts-1-down", ca_file=cfg.mqtt_ca_file)
    conn.on_up.append(lambda session_present: ...)      # run on EVERY connect (paho's network thread)
    conn.start(); conn.wait_connected(10); ...; conn.stop()

Several brokers (the nodes of a cluster: `mqtt://h1:1883,mqtt://h2:1883`, as MICROFLEET_MQTT_URL): the
client connects to the first and, after every connection that ended or failed, moves to the next (round
robin, after the backoff), so the commit marks and downlinks keep flowing when the node behind it dies.
Every URL shares one scheme and one set of credentials (the cluster's user): ValueError otherwise.

The consumer (cloud.runtime.consumer) and the publisher (cloud.runtime.publisher) are built on it.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.runtime.threads import guarded
from contract.mqtturl import MqttAddress, parse_mqtt_url

log = logging.getLogger(__name__)
UNREACHABLE = (
    "unreachable"  # `refusal` when no broker answered (retried with backoff, unlike a CONNACK refusal)
)


def split_mqtt_urls(urls: str) -> list[MqttAddress]:
    """`mqtt://h1:1883,mqtt://h2:1883` -> their addresses, in order. ValueError if there is none, or if
    they differ in TLS or credentials (one client has one identity)."""
    addresses = [parse_mqtt_url(u.strip()) for u in urls.split(",") if u.strip()]
    if not addresses:
        raise ValueError("no MQTT URL: use mqtt://host:port[,mqtt://host:port...]")
    first = addresses[0]
    for a in addresses[1:]:
        if (a.tls, a.username, a.password) != (first.tls, first.username, first.password):
            raise ValueError(
                f"the MQTT URLs {redact_all(urls)!r} differ in scheme or credentials: give every node "
                "the same mqtt:// or mqtts:// and the same user"
            )
    return addresses


def redact_all(urls: str) -> str:
    """Each comma-separated URL redacted (`redact`)."""
    return ",".join(redact(u.strip()) for u in urls.split(",") if u.strip())


def redact(url: str) -> str:
    """The URL without its password (`mqtt://user:***@host:port`), for log lines and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable MQTT URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass
class Backoff:
    """Capped exponential backoff with jitter (pure): each delay lies in [c/2, c], c = min(cap, base*2^n),
    so a fleet of consumers that lost the same broker does not come back in lockstep."""

    base_s: float = 0.5
    cap_s: float = 10.0
    rng: Callable[[], float] = field(default=random.random, repr=False)
    attempt: int = 0

    def next(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        jitter: float = self.rng()
        return ceiling / 2 + jitter * ceiling / 2

    def reset(self) -> None:
        self.attempt = 0


class State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # lost or refused; paho reconnects after the backoff
    STOPPED = "stopped"


def properties(packet: int, **values: int) -> Properties:
    props = Properties(packet)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


MqttVersion = Literal["5", "3.1.1"]
VERSIONS: dict[str, MQTTProtocolVersion] = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


def check_version(version: str) -> MqttVersion:
    """The protocol level named by MICROFLEET_MQTT_VERSION, or ValueError saying what is accepted."""
    if version == "5":
        return "5"
    if version == "3.1.1":
        return "3.1.1"
    raise ValueError(f"MQTT version {version!r}: use 5 or 3.1.1 (the NATS MQTT gateway)")


class MqttClient:
    """A paho MQTT 5 (or 3.1.1) client configured from a URL, with its own network thread (owned: start/stop).

    `on_up` callbacks run on every successful connect with `session_present`; `on_down` on every loss.
    Both run on paho's network thread: they must not block; an exception in one is fatal (threads.fatal).
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        ca_file: str | None = None,
        manual_ack: bool = False,
        keepalive_s: int = 30,
        clean_start: bool = True,
        session_expiry_s: int | None = None,
        receive_maximum: int | None = None,
        inflight: int | None = None,
        backoff: Backoff | None = None,
        version: MqttVersion = "5",
    ) -> None:
        self.addresses = split_mqtt_urls(url)
        self._index = 0
        self.address = self.addresses[0]  # the broker connected to, or tried next
        self.version = check_version(version)
        v5 = self.version == "5"
        self.redacted = redact_all(url)
        self.failovers = 0  # moves to the next broker of the list
        self.client_id = client_id
        self.state = State.IDLE
        self.connected = threading.Event()
        self.connects = 0
        self.refusal = ""  # the broker's last CONNACK refusal, or UNREACHABLE when the connection failed
        self.session_present = False  # as the broker said in the last CONNACK
        self.on_up: list[Callable[[bool], None]] = []
        self.on_down: list[Callable[[], None]] = []
        self._keepalive_s = keepalive_s
        self._clean_start = clean_start
        self._backoff = backoff or Backoff()
        connect: dict[str, int] = {}
        if session_expiry_s is not None:
            connect["SessionExpiryInterval"] = session_expiry_s
        if receive_maximum is not None:
            connect["ReceiveMaximum"] = receive_maximum
        self._connect_props = properties(PacketTypes.CONNECT, **connect) if connect and v5 else None
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=VERSIONS[self.version],
            manual_ack=manual_ack,
            clean_session=None if v5 else clean_start,
        )
        if self.address.username:
            c.username_pw_set(self.address.username, self.address.password)
        if self.address.tls or ca_file:
            c.tls_set(ca_certs=ca_file)
        if inflight is not None:
            c.max_inflight_messages_set(inflight)
        self._set_delay(c)
        c.on_connect = guarded(f"MQTT {client_id} on_connect", self._handle_connect)
        c.on_disconnect = guarded(f"MQTT {client_id} on_disconnect", self._handle_disconnect)
        c.on_connect_fail = guarded(f"MQTT {client_id} on_connect_fail", self._handle_connect_fail)
        self.client = c

    def __repr__(self) -> str:
        return f"MqttClient({self.client_id!r}, {self.redacted!r}, {self.state.value})"

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (retried with backoff until stop) and start paho's network thread."""
        self.state = State.CONNECTING
        self._connect_async(self.client)
        self.client.loop_start()

    def _connect_async(self, c: mqtt.Client) -> None:
        """Point paho at self.address (its loop connects, and reconnects after the backoff)."""
        if self.version == "5":
            clean: Any = self._clean_start
            c.connect_async(
                self.address.host,
                self.address.port,
                keepalive=self._keepalive_s,
                clean_start=clean,
                properties=self._connect_props,
            )
        else:  # clean_session was given to the client; 3.1.1 has no clean_start and no properties
            c.connect_async(self.address.host, self.address.port, keepalive=self._keepalive_s)

    def _next_broker(self, c: mqtt.Client) -> None:
        """After a connection ended or failed: the next broker of the list (paho's loop reconnects to
        it after the backoff). paho's connect_async only records the address when called from its own
        callbacks (the socket is already closed there)."""
        if len(self.addresses) < 2:
            return
        self._index = (self._index + 1) % len(self.addresses)
        self.address = self.addresses[self._index]
        self.failovers += 1
        self._connect_async(c)

    def wait_connected(self, timeout_s: float) -> bool:
        return self.connected.wait(timeout_s)

    def stop(self, *, end_session: bool = False) -> None:
        """Disconnect and join paho's thread. `end_session`: DISCONNECT with Session Expiry Interval 0, so
        the broker discards this client's session (and stops queueing for it); otherwise it keeps it.
        MQTT 3.1.1 has no such property: its session ends only with a clean connect."""
        if self.state is State.STOPPED:
            return
        self.state = State.STOPPED
        v5_end = end_session and self.version == "5"
        props = properties(PacketTypes.DISCONNECT, SessionExpiryInterval=0) if v5_end else None
        self.client.disconnect(properties=props)
        self.client.loop_stop()
        self.connected.clear()

    # -- paho callbacks (network thread) --------------------------------------------------------------
    def _set_delay(self, c: mqtt.Client) -> None:
        delay: Any = self._backoff.next()  # paho annotates int; any number of seconds works
        c.reconnect_delay_set(min_delay=delay, max_delay=delay)

    def _handle_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self.refusal = str(rc)
            log.warning("%s: the broker at %s refused the connection: %s", self.client_id, self.redacted, rc)
            return
        self._backoff.reset()
        self.state = State.CONNECTED
        self.connects += 1
        self.refusal = ""
        session_present = self.session_present = bool(flags.session_present)
        log.info(
            "%s connected to %s:%d (session present: %s)",
            self.client_id,
            self.address.host,
            self.address.port,
            session_present,
        )
        for up in list(self.on_up):
            up(session_present)
        self.connected.set()

    def _handle_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        for down in list(self.on_down):
            down()
        if self.state is State.STOPPED:
            return
        self.state = State.DISCONNECTED
        self._set_delay(client)
        lost = self.address
        self._next_broker(client)
        if was:
            log.warning(
                "%s disconnected from %s:%d (%s); reconnecting to %s:%d",
                self.client_id,
                lost.host,
                lost.port,
                rc,
                self.address.host,
                self.address.port,
            )

    def _handle_connect_fail(self, client: mqtt.Client, _u: Any) -> None:
        if self.state is not State.STOPPED:
            self.state = State.DISCONNECTED
            self.refusal = UNREACHABLE
            self._set_delay(client)
            lost = self.address
            self._next_broker(client)
            log.debug("%s: %s:%d unreachable; retrying", self.client_id, lost.host, lost.port)
