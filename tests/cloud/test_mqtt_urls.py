"""Several brokers in one MQTT URL (cloud.runtime.mqtt): parsed in order, one identity for all, and the
client moves to the next after a connection that failed (a real refused TCP connect on loopback)."""

from __future__ import annotations

import time

import pytest

from cli.localbroker import free_port
from cloud.runtime.mqtt import MqttClient, redact_all, split_mqtt_urls


def test_urls_in_order_with_one_identity() -> None:
    a, b = split_mqtt_urls("mqtt://u:p@h1:1884, mqtt://u:p@h2")
    assert (a.host, a.port, b.host, b.port) == ("h1", 1884, "h2", 1883)
    assert a.username == b.username == "u"
    assert redact_all("mqtt://u:p@h1:1,mqtt://u:p@h2:2") == "mqtt://u:***@h1:1,mqtt://u:***@h2:2"
    with pytest.raises(ValueError, match="differ in scheme or credentials"):
        split_mqtt_urls("mqtt://u:p@h1,mqtts://u:p@h2")
    with pytest.raises(ValueError, match="differ in scheme or credentials"):
        split_mqtt_urls("mqtt://u:p@h1,mqtt://v:p@h2")
    with pytest.raises(ValueError, match="no MQTT URL"):
        split_mqtt_urls(" , ")


def test_a_failed_connect_moves_to_the_next_broker() -> None:
    dead = [free_port(), free_port()]  # nothing listens there: every connect is refused
    client = MqttClient(",".join(f"mqtt://127.0.0.1:{p}" for p in dead), "t-failover")
    client.start()
    try:
        deadline = time.monotonic() + 10
        while client.failovers < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.failovers >= 3  # round robin: 0 -> 1 -> 0 -> 1
        assert client.address.port in dead
        assert not client.connected.is_set()
    finally:
        client.stop()
