"""Where ingest and the alert engine take uplinks from, chosen by URL in one place: with a NATS URL
(MICROFLEET_NATS_URL, `nats://h1:p1,nats://h2:p2`: the clustered tier) a JetStream durable on the MQTT
gateway's `$MQTT_msgs` stream (cloud.runtime.jetstream), else the MQTT shared subscription of a group on
mosquitto (cloud.ingest.consumer). The group names the durable on NATS: `ingest` for ingest, `alerts` for
the alert engine, each created by `microfleet nats setup` before the devices connect.

Either source calls `on_message(topic, payload, token)` for each message and takes `ack(tokens)` after
the batch that holds them committed.

    source = uplink_source(UplinkSourceSpec(nats_url=..., mqtt_url=..., group="alerts", ...), inbox.offer)

`kinds` (the uplink kinds a service reads) narrows the MQTT subscription to one shared filter per kind.
A JetStream durable has one filter on nats-server 2.9 (`$MQTT.msgs.mf.v1.*.up.>`): the service receives
every uplink kind there and acknowledges at once what it does not read (`wanted`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cloud.ingest.consumer import Consumer
from contract import topics


class Source(Protocol):
    """Where uplinks come from: the MQTT shared subscription (cloud.ingest.consumer) or a JetStream
    durable (cloud.runtime.jetstream). It calls on_message(topic, payload, token) for each message;
    `ack(tokens)` after the batch committed."""

    connected_event: threading.Event
    subscribed_event: threading.Event
    subscription: str

    @property
    def redacted_url(self) -> str: ...

    @property
    def connects(self) -> int: ...

    @property
    def redeliveries(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def leave(self, *, timeout_s: float = ...) -> bool: ...

    def ack(self, tokens: Any) -> int: ...


@dataclass(frozen=True, slots=True)
class UplinkSourceSpec:
    """What either source needs. `group`: the shared-subscription group on MQTT, the durable on NATS;
    `receive_maximum`: messages held unacknowledged by this process (Receive Maximum on MQTT, the
    fetch bound on NATS)."""

    mqtt_url: str
    group: str
    consumer_id: str
    nats_url: str = ""
    receive_maximum: int = 8000
    session_expiry_s: int = 7 * 24 * 3600
    ca_file: str | None = None
    kinds: tuple[topics.Uplink, ...] | None = None

    @property
    def on_nats(self) -> bool:
        return bool(self.nats_url)

    @classmethod
    def of(
        cls, cfg: ServiceConnection, group: str, kinds: tuple[topics.Uplink, ...] | None = None
    ) -> UplinkSourceSpec:
        """The spec of a service's configuration (CloudConfig for ingest, AlertConfig for the engine)."""
        return cls(
            mqtt_url=cfg.mqtt_url,
            nats_url=cfg.nats_url,
            group=group,
            consumer_id=cfg.consumer_id,
            receive_maximum=cfg.receive_maximum,
            session_expiry_s=cfg.session_expiry_s,
            ca_file=cfg.mqtt_ca_file,
            kinds=kinds,
        )


class ServiceConnection(Protocol):
    """What a service's configuration says about its uplink source (both configurations have these)."""

    @property
    def mqtt_url(self) -> str: ...
    @property
    def nats_url(self) -> str: ...
    @property
    def consumer_id(self) -> str: ...
    @property
    def receive_maximum(self) -> int: ...
    @property
    def session_expiry_s(self) -> int: ...
    @property
    def mqtt_ca_file(self) -> str | None: ...


OnMessage = Callable[[str, bytes, Any], None]


def uplink_source(spec: UplinkSourceSpec, on_message: OnMessage) -> Source:
    """The JetStream durable `spec.group` when `spec.nats_url` is set, else the MQTT shared subscription."""
    if spec.nats_url:
        from cloud.runtime.jetstream import JetStreamSource

        return JetStreamSource(
            urls=spec.nats_url,
            durable=spec.group,
            name=spec.consumer_id,
            on_message=on_message,
            max_outstanding=spec.receive_maximum,
        )
    kinds: Sequence[topics.Uplink] | None = spec.kinds
    return Consumer(
        mqtt_url=spec.mqtt_url,
        client_id=spec.consumer_id,
        group=spec.group,
        on_message=on_message,
        receive_maximum=spec.receive_maximum,
        session_expiry_s=spec.session_expiry_s,
        kinds=kinds,
        ca_file=spec.ca_file,
    )


def wanted(kinds: Sequence[topics.Uplink]) -> Callable[[str], bool]:
    """A test on a topic: is it an uplink of one of `kinds`? (`mf/v1/<id>/up/<kind>`: the last level.)"""
    names = frozenset(k.value for k in kinds)
    return lambda topic: topic.rpartition("/")[2] in names
