"""The alert feed (MICROFLEET_ALERT_FEED=committed, docs/decisions/alert-feed.md) on the NATS tier, on a real
three-node cluster (tests/support/nats.py).

- `microfleet nats setup` makes the durables of the feed mode asked for (committed: `ingest` and
  `alerts-feed`, never the uplinks `alerts`, which on the interest stream `$MQTT_msgs` would keep every
  uplink unacknowledged), warns with what it holds about the other mode's alert durable, and with
  `--delete-other` deletes it.
- The O5 scenario of tests/nats/test_alerts_tier.py in committed mode: a real 3.1.1 agent, a real ingest
  that feeds its committed batches through the gateway, a real `alerts run` on the `alerts-feed` durable;
  the rule fires, the notice reaches the agent, and at the end the durables hold nothing unacknowledged.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from cli.main import app
from cloud.alerts.feed_source import feed_subject
from cloud.runtime.jetstream import MQTT_STREAM, UPLINK_SUBJECT
from tests.nats.marks import requires_nats_server
from tests.nats.test_alerts_tier import o5_through_the_tier
from tests.support.nats import NatsCluster

pytestmark = [
    pytest.mark.slow,
    requires_nats_server,
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster.started(tmp_path / "nats") as c:
        yield c


async def durables(cluster: NatsCluster) -> dict[str, Any]:
    """name -> ConsumerInfo of every durable on `$MQTT_msgs` (through another node than setup's)."""
    import nats

    nc = await nats.connect(servers=[cluster.nats_url(2)], connect_timeout=5.0)
    try:
        js = nc.jetstream(timeout=10.0)
        return {info.name: info for info in await js.consumers_info(MQTT_STREAM)}
    finally:
        await nc.close()


def setup(cluster: NatsCluster, feed: str, *extra: str) -> tuple[int, str, str]:
    """`microfleet nats setup` with MICROFLEET_ALERT_FEED=`feed`: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(
        app,
        ["nats", "setup", "--url", ",".join(cluster.nats_urls()), "--mqtt-url", cluster.mqtt_url(0), *extra],
        env={"MICROFLEET_ALERT_FEED": feed, "MICROFLEET_NATS_URL": None, "MICROFLEET_MQTT_URL": None},
    )
    return result.exit_code, result.stdout, result.stderr


def publish_uplink(port: int) -> None:
    """One device uplink, QoS 1 over MQTT 3.1.1 through a gateway, PUBACKed."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="feed-dev-1", protocol=mqtt.MQTTv311)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert connected.wait(10), "no CONNACK from the gateway"
        info = client.publish("mf/v1/feed-dev-1/up/status", b"x", qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_setup_makes_the_durables_of_the_feed_mode(cluster: NatsCluster) -> None:
    code, out, err = setup(cluster, "committed")
    assert code == 0, err
    assert "durable ingest on $MQTT_msgs: created" in out
    assert "durable alerts-feed on $MQTT_msgs: created" in out
    made = asyncio.run(durables(cluster))
    assert set(made) == {"ingest", "alerts-feed"}  # no uplinks `alerts` durable in committed mode
    assert made["alerts-feed"].config.filter_subject == feed_subject()
    assert made["ingest"].config.filter_subject == UPLINK_SUBJECT
    assert made["alerts-feed"].config.num_replicas in (0, 3)  # the stream's R3

    # back to uplinks: `alerts` is made, the feed's durable is left with a warning (it holds nothing)
    code, out, err = setup(cluster, "uplinks")
    assert code == 0, err
    assert "durable ingest on $MQTT_msgs: exists" in out
    assert "durable alerts on $MQTT_msgs: created" in out
    assert "warning: durable alerts-feed" in err and "left: 0 pending, 0 unacknowledged" in err
    assert set(asyncio.run(durables(cluster))) == {"ingest", "alerts", "alerts-feed"}

    # a device publishes: the uplinks `alerts` durable now holds it (and would forever in committed mode)
    publish_uplink(cluster.mqtt_port(1))
    code, out, err = setup(cluster, "committed")
    assert code == 0, err
    assert "warning: durable alerts " in err and "left: 1 pending, 0 unacknowledged" in err
    assert "alerts" in asyncio.run(durables(cluster))  # only a warning: nothing deleted without the flag

    code, out, err = setup(cluster, "committed", "--delete-other")
    assert code == 0, err
    assert "durable alerts on $MQTT_msgs (not read in committed mode): deleted (1 pending" in out
    assert "warning" not in err
    assert set(asyncio.run(durables(cluster))) == {"ingest", "alerts-feed"}

    code, _out, err = setup(cluster, "sideways")
    assert code == 2 and "--feed" in err


async def test_committed_feed_on_the_cluster_fires_and_leaves_nothing_unacked(
    cluster: NatsCluster, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = await o5_through_the_tier(cluster, tmp_path, database_url, monkeypatch, feed="committed")
    assert "durable ingest on $MQTT_msgs: created" in out
    assert "durable alerts-feed on $MQTT_msgs: created" in out

    deadline = time.monotonic() + 10.0  # the last acks of the stopped processes are on their way
    while True:
        made = await durables(cluster)
        held = {n: (i.num_pending, i.num_ack_pending) for n, i in made.items()}
        if all(h == (0, 0) for h in held.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    # the services' pull durables (the rest are the gateway's push consumers of MQTT sessions: the agent's)
    pulled = {n for n, i in made.items() if not i.config.deliver_subject}
    assert pulled == {"ingest", "alerts-feed"}  # the engine never read (nor made) an uplinks durable
    assert held == dict.fromkeys(made, (0, 0)), {n: made[n].config.filter_subject for n in made}
    assert made["alerts-feed"].delivered.stream_seq > 0  # the engine did read the feed
    assert made["alerts-feed"].num_redelivered == 0
