"""The three-node NATS cluster of tests/support/nats.py forms, and survives losing a stream's leader: the
MQTT gateway's streams are replicated on three nodes (R3), a QoS 1 MQTT 3.1.1 publish is acknowledged, and
when the leader of `$MQTT_msgs` is killed another node leads, publishing goes on, and the node comes back.
bench/nats_probe.py measures the rest (issue 13; docs/decisions/nats-tier.md)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.nats import NatsCluster, nats_server_binary

# Opt-in until the NATS tier is built (issue 13): nats-server 2.9.10 (Debian) may stall its MQTT gateway for up
# to about a minute after a stream leader dies, which the suite's 10-minute budget cannot carry on every run.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("MICROFLEET_TEST_NATS") != "1",
        reason="the NATS tier's groundwork: run with MICROFLEET_TEST_NATS=1 (issue 13)",
    ),
    pytest.mark.skipif(
        nats_server_binary() is None,
        reason="nats-server is not installed: apt-get install -y nats-server (or set MICROFLEET_NATS_SERVER)",
    ),
]
RECONNECT_S = 90.0  # the gateway's stall after a leader loss (about 58 s measured on 2.9.10 in issue 13)


def mqtt311_publish(port: int, topic: str, payload: bytes) -> None:
    """One QoS 1 publish over MQTT 3.1.1 (what the gateway speaks), waiting for its PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="smoke", protocol=mqtt.MQTTv311)
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect_async("127.0.0.1", port)
    client.reconnect_delay_set(1, 2)
    client.loop_start()
    try:
        assert connected.wait(RECONNECT_S), "no CONNACK from the MQTT gateway"
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_three_nodes_form_and_a_stream_leader_can_be_killed(tmp_path: Path) -> None:
    with NatsCluster.started(tmp_path) as cluster:
        assert cluster.meta_leader() in {"n0", "n1", "n2"}
        mqtt311_publish(
            cluster.mqtt_port(1), "mf/v1/smoke/up/status", b"hello"
        )  # the gateway makes its streams
        streams = cluster.streams()
        assert {"$MQTT_msgs", "$MQTT_rmsgs", "$MQTT_sess"} <= set(streams)
        assert len(streams["$MQTT_msgs"]["replicas"]) == 2  # a leader and two followers: R3
        leader = cluster.wait_stream_leader("$MQTT_msgs")
        cluster.kill(cluster.index(leader))
        assert cluster.wait_stream_leader("$MQTT_msgs", not_on=leader, timeout=30) != leader
        survivor = next(n.index for n in cluster.nodes if n.running)
        mqtt311_publish(cluster.mqtt_port(survivor), "mf/v1/smoke/up/status", b"again")
        cluster.start_node(cluster.index(leader))
        cluster.wait_ready()
        assert all(n.running for n in cluster.nodes)
