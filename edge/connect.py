"""How the agent reaches its broker: the addresses it rotates through and the MQTT protocol level.

`MICROFLEET_MQTT_URL` may name several brokers of one cluster, comma-separated
(`mqtt://127.0.0.1:1883,mqtt://127.0.0.1:1884`): the link connects to the first and moves to the next
after every connection that ended or failed, so an agent whose node died comes back through another
node's gateway (and re-sends what no commit mark covers).

The protocol level (`MICROFLEET_EDGE_MQTT_VERSION`, docs/decisions/nats-tier.md decision 6):
- "5" (the default): Session Expiry Interval and clean_start, PUBACK reason codes (0x10 "no matching
  subscribers" and >= 0x80 refusals are counted as not taken and sent again);
- "3.1.1" (the NATS MQTT gateway speaks nothing else): clean_session when session_expiry_s is 0,
  otherwise a kept session (3.1.1 has no expiry: the broker keeps it until a clean connect); a PUBACK
  carries no reason code, so every acknowledged publish counts as taken. Nothing is lost by that: rows
  leave the outbox only when the cloud's commit mark covers them (ack_mode "committed"), and a broker
  that refuses a publish closes the connection instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contract.mqtturl import MqttAddress, parse_mqtt_url
from edge.checked import CheckedClient
from edge.config import EdgeConfig

__all__ = ["INCOMING_QUEUE_MAX", "Brokers", "new_client"]

INCOMING_QUEUE_MAX = 100


class Brokers:
    """The broker addresses of MICROFLEET_MQTT_URL (EdgeConfig.mqtt_urls), in order; `moved()` goes to
    the next one."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.addresses = tuple(parse_mqtt_url(u) for u in urls)
        if not self.addresses:
            raise ValueError("no MQTT URL")
        self._i = 0

    @property
    def current(self) -> MqttAddress:
        return self.addresses[self._i]

    def moved(self) -> MqttAddress:
        """The connection ended or failed: the next address (the same one if there is only one)."""
        self._i = (self._i + 1) % len(self.addresses)
        return self.current


def new_client(cfg: EdgeConfig, addr: MqttAddress, will_topic: str, will: bytes) -> CheckedClient:
    """A fresh client for one connection at the configured protocol level, with a retained QoS 1 will."""
    common: dict[str, object] = {
        "username": addr.username,
        "password": addr.password,
        "identifier": cfg.device_id,
        "will": aiomqtt.Will(will_topic, will, qos=1, retain=True),
        "keepalive": cfg.keepalive_s,
        "timeout": cfg.connect_timeout_s,
        "max_inflight_messages": cfg.inflight,
        "max_queued_incoming_messages": INCOMING_QUEUE_MAX,
        "tls_params": aiomqtt.TLSParameters() if addr.tls else None,
    }
    if cfg.mqtt_version == "3.1.1":
        return CheckedClient(
            addr.host,
            addr.port,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=cfg.session_expiry_s == 0,
            **common,
        )
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if cfg.session_expiry_s > 0:
        props.SessionExpiryInterval = cfg.session_expiry_s
    return CheckedClient(
        addr.host,
        addr.port,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=cfg.session_expiry_s == 0,
        properties=props,
        **common,
    )
