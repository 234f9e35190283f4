"""Broker addresses: `mqtt://[user[:password]@]host[:port]` (1883) or `mqtts://...` (8883)."""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import unquote, urlsplit


class MqttAddress(NamedTuple):
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool


def parse_mqtt_url(url: str) -> MqttAddress:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp"):
        raise ValueError(f"MQTT URL {url!r} must start with mqtt:// or mqtts://")
    tls = parts.scheme == "mqtts"
    return MqttAddress(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )
