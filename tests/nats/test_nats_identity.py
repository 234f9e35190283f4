"""The NATS tier's trust model on a real three-node cluster (docs/decisions/nats-tier.md, decision 7; issue
13): users rendered from the same roles as the Mosquitto tier (cloud/identity/nats_policy.py), devices
speaking MQTT 3.1.1 through the gateway, services reading JetStream with only their durable's rights.

What is measured here (nats-server 2.9.10, Debian 12):
- a device publishes its own uplinks (stored in `$MQTT_msgs`, read by ingest's durable) and receives its
  own downlinks; another device's subscription gets SUBACK 0x80;
- a publish to another device's topic is ACKNOWLEDGED (MQTT 3.1.1 has no PUBACK code) and dropped: the
  connection stays open, and nothing reaches JetStream;
- a device's credentials are refused over the NATS protocol (they hold `$MQTT.sub.>`);
- a downlink kind is sent only by the service that owns it (policy.DOWNLINK_SENDERS);
- revoking (render + SIGHUP every node) disconnects the device at once and refuses it on every node;
- client ids are NOT bound to users: device B can connect with A's client id, which takes A's session
  (A is disconnected) without giving B A's downlinks; with a clean session it deletes A's session and
  the QoS 1 downlinks queued in it. docs/security.md says so and gives the mitigation.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud.identity import nats_policy
from cloud.identity.nats_users import NatsIdentities, reload, write_auth
from tests.nats.marks import requires_nats_server
from tests.support.nats import NatsCluster, nats_server_binary

pytestmark = requires_nats_server

WAIT_S = 10.0
UPLINKS = "$MQTT.msgs.mf.v1.*.up.>"


# -- MQTT 3.1.1 clients (what the gateway speaks), without automatic reconnection -------------------------


@dataclass
class Device:
    """A paho MQTT 3.1.1 client that records what happens to it; it never reconnects by itself."""

    client: mqtt.Client
    connack: list[str] = field(default_factory=list)
    session_present: list[bool] = field(default_factory=list)
    suback: list[list[int]] = field(default_factory=list)
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)

    def wait(self, what: str, count: int = 1, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while len(getattr(self, what)) < count and time.monotonic() < deadline:
            self.event.wait(0.05)
            self.event.clear()
        assert len(getattr(self, what)) >= count, f"no {what} after {timeout}s: {self}"

    def subscribe(self, topic: str) -> list[int]:
        n = len(self.suback)
        self.client.subscribe(topic, qos=1)
        self.wait("suback", n + 1)
        return self.suback[n]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1, waits for the PUBACK."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    @property
    def connected(self) -> bool:
        return bool(self.client.is_connected())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(
    port: int, client_id: str, username: str, password: str, *, clean: bool = False, expect_ok: bool = True
) -> Device:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=clean
    )
    client.username_pw_set(username, password)
    client.reconnect_delay_set(3600, 3600)  # never within a test: what the server does is what we see
    dev = Device(client)

    def on_connect(_c: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        dev.connack.append(str(rc))
        dev.session_present.append(bool(flags.session_present))
        dev.event.set()

    def on_subscribe(_c: Any, _u: Any, _mid: int, rcs: list[Any], _p: Any) -> None:
        dev.suback.append([int(r.value) for r in rcs])
        dev.event.set()

    def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        dev.messages.append((m.topic, bytes(m.payload), bool(m.retain)))
        dev.event.set()

    def on_disconnect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        dev.disconnects.append(str(rc))
        dev.event.set()

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    client.on_message, client.on_disconnect = on_message, on_disconnect
    client.connect_async("127.0.0.1", port)
    client.loop_start()
    dev.wait("connack")
    if expect_ok:
        assert dev.connack[0] == "Success", f"{username} as {client_id}: CONNACK {dev.connack[0]}"
    return dev


# -- the cluster with rendered users ------------------------------------------------------------------------


@dataclass
class AuthCluster:
    cluster: NatsCluster
    identities: NatsIdentities
    secrets: dict[str, str]

    def auth_files(self) -> list[Path]:
        return [self.cluster.workdir / n.name / "auth.conf" for n in self.cluster.nodes]

    def apply(self) -> None:
        """Render, write every node's include, SIGHUP every live node, and wait for each to log it."""
        before = [self._reloads(i) for i in range(len(self.cluster.nodes))]
        write_auth(self.identities, self.auth_files())
        pids = [n.proc.pid for n in self.cluster.nodes if n.proc is not None and n.running]
        assert reload(pids) == []
        deadline = time.monotonic() + WAIT_S
        for i, node in enumerate(self.cluster.nodes):
            while node.running and self._reloads(i) <= before[i]:
                assert time.monotonic() < deadline, f"{node.name} did not reload"
                time.sleep(0.05)

    def _reloads(self, i: int) -> int:
        log = self.cluster.log_path(i)
        return log.read_text().count("Reloaded server configuration") if log.exists() else 0

    def device(self, device_id: str) -> str:
        self.secrets[device_id] = self.identities.provision_device(device_id)
        return self.secrets[device_id]

    def service(self, name: str, role: str) -> str:
        self.secrets[name] = self.identities.provision_service(name, role)
        return self.secrets[name]


# -- JetStream through the service users' own rights --------------------------------------------------------


async def _js_call(url: str, user: str, password: str, fn: Any) -> Any:
    import nats

    nc = await nats.connect(url, user=user, password=password, allow_reconnect=False, connect_timeout=5)
    try:
        return await fn(nc.jetstream())
    finally:
        await nc.close()


def create_durable(url: str, user: str, password: str, durable: str, timeout: float = 5.0) -> None:
    """What deployment does before devices publish ($MQTT_msgs is an interest stream)."""
    from nats.js.api import AckPolicy, ConsumerConfig

    async def add(js: Any) -> None:
        cfg = ConsumerConfig(durable_name=durable, filter_subject=UPLINKS, ack_policy=AckPolicy.EXPLICIT)
        await js.add_consumer(nats_policy.MQTT_STREAM, cfg, timeout=timeout)

    asyncio.run(_js_call(url, user, password, add))


def drain_durable(url: str, user: str, password: str, durable: str) -> list[tuple[str, bytes]]:
    """Fetch and acknowledge everything the durable holds, as its service would (pull, then ack)."""
    import nats.errors

    async def fetch_all(js: Any) -> list[tuple[str, bytes]]:
        sub = await js.pull_subscribe_bind(durable=durable, stream=nats_policy.MQTT_STREAM)
        got: list[tuple[str, bytes]] = []
        while True:
            try:
                batch = await sub.fetch(50, timeout=1.5)
            except nats.errors.TimeoutError:
                return got
            for m in batch:
                got.append((m.subject, m.data))
                await m.ack_sync()

    result: list[tuple[str, bytes]] = asyncio.run(_js_call(url, user, password, fetch_all))
    return result


def log_lines(cluster: NatsCluster, needle: str) -> list[str]:
    return [
        line
        for i in range(len(cluster.nodes))
        if cluster.log_path(i).exists()
        for line in cluster.log_path(i).read_text().splitlines()
        if needle in line
    ]


@contextlib.contextmanager
def auth_cluster(workdir: Path, devices: tuple[str, ...] = ()) -> Iterator[AuthCluster]:
    """A three-node cluster whose users are rendered from NatsIdentities: the services (svc-ingest,
    svc-alerts, svc-ota, nats-admin) and `devices`; ingest's durable made before any traffic."""
    cluster = NatsCluster(workdir, extra_conf="include auth.conf")
    ac = AuthCluster(cluster, NatsIdentities(), {})
    for name in ("svc-ingest", "svc-alerts", "svc-ota"):
        ac.service(name, name)
    ac.service("nats-admin", nats_policy.ADMIN_ROLE)
    for dev in ("dev-r", *devices):
        ac.device(dev)
    write_auth(ac.identities, ac.auth_files())
    try:
        cluster.start()
        # the gateway makes its streams on the first MQTT connection; then the durable, before traffic
        connect(cluster.mqtt_port(0), "dev-r", "dev-r", ac.secrets["dev-r"]).close()
        create_durable(cluster.nats_url(1), "nats-admin", ac.secrets["nats-admin"], "ingest")
        yield ac
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthCluster]:
    with auth_cluster(tmp_path_factory.mktemp("nats-auth"), ("dev-a", "dev-b")) as ac:
        yield ac


def new_device(auth: AuthCluster, prefix: str) -> tuple[str, str]:
    device_id = f"{prefix}-{uuid.uuid4().hex[:6]}"
    secret = auth.device(device_id)
    auth.apply()
    return device_id, secret


# -- pure: the rights come from the Mosquitto tier's roles ------------------------------------------------


def test_rights_are_the_mosquitto_roles_translated() -> None:
    dev = nats_policy.device_permissions("dev-a")
    assert dev.publish == ("mf.v1.dev-a.up.>",)
    assert set(dev.subscribe) == {"mf.v1.dev-a.down", "mf.v1.dev-a.down.>", "$MQTT.sub.>"}
    assert dev.connection_types == ("MQTT",)
    alerts = nats_policy.service_permissions("svc-alerts")
    assert set(alerts.publish) >= {"mf.v1.*.down.notice", "mf.v1.*.down.gate"}
    assert "mf.v1.*.down.protocol" not in alerts.publish
    assert "$JS.API.CONSUMER.MSG.NEXT.$MQTT_msgs.alerts" in alerts.publish
    assert not any(s.startswith("mf.") for s in alerts.subscribe)  # reads JetStream, not the devices
    # the alert feed: ingest publishes it through the gateway, alerts reads it from its feed durable only
    ingest = nats_policy.service_permissions("svc-ingest")
    assert "mf.v1._cloud.committed" in ingest.publish
    assert "mf.v1._cloud.committed" not in alerts.publish
    assert "$JS.API.CONSUMER.MSG.NEXT.$MQTT_msgs.alerts-feed" in alerts.publish
    assert not any("alerts-feed" in s for s in ingest.publish)
    assert len(set(alerts.publish)) == len(alerts.publish)
    ota = nats_policy.service_permissions("svc-ota")
    assert ota.subscribe == () and ota.connection_types == ("MQTT",)
    assert "mf.v1._cloud.committed" not in ota.publish
    with pytest.raises(nats_policy.NatsIdError):
        nats_policy.device_permissions("dev.a")  # the gateway refuses a '.' in a topic
    with pytest.raises(ValueError):
        nats_policy.service_permissions("svc-nobody")


def test_rendered_include_is_valid_for_nats_server(tmp_path: Path) -> None:
    ids = NatsIdentities()
    ids.provision_device("dev-a")
    for role in nats_policy.service_roles():
        ids.provision_service(role, role)
    (tmp_path / "auth.conf").write_text(ids.render())
    (tmp_path / "nats.conf").write_text("listen: 127.0.0.1:-1\ninclude auth.conf\n")
    binary = nats_server_binary()
    assert binary is not None
    out = subprocess.run([binary, "-t", "-c", str(tmp_path / "nats.conf")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    (tmp_path / "auth.conf").write_text(ids.render().replace("allow", "alow", 1))
    bad = subprocess.run([binary, "-t", "-c", str(tmp_path / "nats.conf")], capture_output=True, text=True)
    assert bad.returncode != 0  # the check can fail


def test_store_round_trip_keeps_no_secret(tmp_path: Path) -> None:
    ids = NatsIdentities()
    secret = ids.provision_device("dev-a")
    ids.provision_service("svc-ingest", "svc-ingest", "chosen-password")
    store = tmp_path / "identities.json"
    ids.save(store)
    text = store.read_text()
    assert secret not in text and "chosen-password" not in text
    assert store.stat().st_mode & 0o777 == 0o600
    again = NatsIdentities.load(store)
    assert again.render() == ids.render()
    assert again.revoke_device("dev-a") and not again.revoke_device("dev-a")


# -- on the cluster -------------------------------------------------------------------------------------------


def test_device_publishes_its_own_uplinks_and_nothing_else(auth: AuthCluster) -> None:
    c = auth.cluster
    a = connect(c.mqtt_port(0), "dev-a", "dev-a", auth.secrets["dev-a"])
    try:
        a.publish("mf/v1/dev-a/up/status", b"own")
        a.publish("mf/v1/dev-b/up/status", b"forged")  # acknowledged: 3.1.1 has no code to refuse with
        a.publish("mf/v1/dev-a/up/event", b"still-connected")
        assert a.connected and a.disconnects == []  # 2.9.10 keeps the connection open
        got = drain_durable(c.nats_url(2), "svc-ingest", auth.secrets["svc-ingest"], "ingest")
    finally:
        a.close()
    assert sorted(got) == [
        ("$MQTT.msgs.mf.v1.dev-a.up.event", b"still-connected"),
        ("$MQTT.msgs.mf.v1.dev-a.up.status", b"own"),
    ]
    # the server says why it dropped it (2.9.10 and 2.15.1 word the line differently)
    assert any("mf.v1.dev-b.up.status" in line for line in log_lines(c, "Publish Violation"))


def test_a_service_reaches_its_own_durable_only(auth: AuthCluster) -> None:
    """svc-ingest may (re)create and read durable `ingest` (the server answers with the consumer), not the
    alert engine's, and may delete nothing."""
    import nats.errors

    url, pw = auth.cluster.nats_url(0), auth.secrets["svc-ingest"]
    create_durable(url, "svc-ingest", pw, "ingest")  # exists, same config: the idempotent create is allowed
    with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):  # the server drops a refused request
        create_durable(url, "svc-ingest", pw, "alerts", timeout=1.0)

    async def delete(js: Any) -> None:
        await asyncio.wait_for(js.delete_consumer(nats_policy.MQTT_STREAM, "ingest"), 1.0)

    with pytest.raises((TimeoutError, nats.errors.TimeoutError, nats.errors.Error)):
        asyncio.run(_js_call(url, "svc-ingest", pw, delete))
    refused = log_lines(auth.cluster, "Publish Violation")
    assert any("CONSUMER.DELETE.$MQTT_msgs.ingest" in line for line in refused)
    assert any(".$MQTT_msgs.alerts" in line for line in refused)


def test_device_receives_its_own_downlinks_from_their_owners_only(auth: AuthCluster) -> None:
    c = auth.cluster
    b = connect(c.mqtt_port(1), "dev-b", "dev-b", auth.secrets["dev-b"])
    alerts = connect(c.mqtt_port(2), "alerts-1", "svc-alerts", auth.secrets["svc-alerts"])
    try:
        assert b.subscribe("mf/v1/dev-b/down/#") == [1]
        assert b.subscribe("mf/v1/dev-a/down/#") == [0x80]  # another device's downlinks
        assert b.subscribe("$MQTT/msgs/#") == [0x80]  # the gateway's internals
        alerts.publish("mf/v1/dev-b/down/protocol", b"not-alerts-kind")  # svc-ota's kind: dropped
        alerts.publish("mf/v1/dev-b/down/notice", b"notice")
        b.wait("messages")
        time.sleep(0.5)  # the dropped one would come first: give it time anyway
        assert b.messages == [("mf/v1/dev-b/down/notice", b"notice", False)]
    finally:
        b.close()
        alerts.close()


def test_device_and_downlink_service_credentials_refused_over_nats(auth: AuthCluster) -> None:
    import nats.errors

    c = auth.cluster
    for user in ("dev-a", "svc-ota"):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            asyncio.run(_js_call(c.nats_url(0), user, auth.secrets[user], lambda js: asyncio.sleep(0)))
    bad = connect(c.mqtt_port(0), "dev-a", "dev-a", "not-the-secret", expect_ok=False)
    bad.close()
    assert bad.connack == ["Not authorized"]


def test_a_revoked_device_is_disconnected_and_refused_on_every_node(auth: AuthCluster) -> None:
    c = auth.cluster
    device_id, secret = new_device(auth, "rev")
    live = connect(c.mqtt_port(0), device_id, device_id, secret)
    try:
        assert auth.identities.revoke_device(device_id)
        auth.apply()
        live.wait("disconnects")
        assert not live.connected
    finally:
        live.close()
    for i in range(len(c.nodes)):
        again = connect(c.mqtt_port(i), device_id, device_id, secret, expect_ok=False)
        again.close()
        assert again.connack == ["Not authorized"], f"node {i}"


def test_client_id_takeover_is_not_prevented_and_what_it_costs(auth: AuthCluster) -> None:
    """NATS binds no client id to a user. Measured: B connects with A's client id (CONNACK 0, session
    present) and A is disconnected; A's subscriptions are not restored for B (no right on A's subjects),
    so B reads nothing of A's, and what was queued meanwhile waits for A in its session. But with a clean
    session B deletes A's session: the QoS 1 downlink queued for A while it was offline is lost (retained
    desired state is not: the agent re-subscribes on every connect; commit marks are asked for again)."""
    c = auth.cluster
    a_id, a_secret = new_device(auth, "victim")
    b_id, b_secret = new_device(auth, "thief")
    alerts = connect(c.mqtt_port(2), "alerts-2", "svc-alerts", auth.secrets["svc-alerts"])
    a = connect(c.mqtt_port(0), a_id, a_id, a_secret)
    try:
        assert a.subscribe(f"mf/v1/{a_id}/down/#") == [1]
        thief = connect(c.mqtt_port(1), a_id, b_id, b_secret)  # B's credentials, A's client id
        assert thief.session_present == [True]  # it took A's session
        a.wait("disconnects")  # and A was thrown off
        a.close()
        alerts.publish(f"mf/v1/{a_id}/down/notice", b"queued-1")
        time.sleep(1.0)
        assert thief.messages == []  # B cannot read A's downlinks
        thief.close()
        back = connect(c.mqtt_port(0), a_id, a_id, a_secret)  # no re-subscribe: the session delivers
        back.wait("messages")
        assert back.session_present == [True]
        assert back.messages == [(f"mf/v1/{a_id}/down/notice", b"queued-1", False)]
        back.close()
        # A offline, its session holds a QoS 1 notice; B connects with a clean session as A: it is wiped
        alerts.publish(f"mf/v1/{a_id}/down/notice", b"queued-2")
        wiper = connect(c.mqtt_port(1), a_id, b_id, b_secret, clean=True)
        wiper.close()
        back = connect(c.mqtt_port(0), a_id, a_id, a_secret)
        try:
            time.sleep(2.0)
            assert back.session_present == [False]  # A's session is gone
            assert back.messages == []  # and the notice queued in it
        finally:
            back.close()
    finally:
        alerts.close()
