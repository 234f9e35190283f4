"""Each device can speak only for itself: tested against a mosquitto of our own with the production overlay."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from cloud.identity import provision
from cloud.identity.dynsec import DynsecClient, DynsecError
from tests.support.services import Mosquitto, secure_broker

ADMIN_PW = "admin-secret"


@pytest.fixture
def sbroker() -> Iterator[Mosquitto]:
    b = secure_broker(ADMIN_PW)
    b.start()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def admin(sbroker: Mosquitto) -> Iterator[DynsecClient]:
    with DynsecClient(sbroker.url, "admin", ADMIN_PW) as client:
        provision.bootstrap(client)
        yield client


class Peer:
    """A paho MQTT 5 client that records what the broker answered."""

    def __init__(self, port: int, username: str | None, password: str | None, client_id: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        self.connack: ReasonCode | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.suback: list[ReasonCode] = []
        self.subscribed = threading.Event()
        self.puback: dict[int, ReasonCode] = {}
        self.published = threading.Condition()
        self.messages: list[tuple[str, bytes]] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self.disconnected.set()
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.connack = rc
        self.connected.set()

    def _on_subscribe(self, _c: object, _u: object, _mid: int, rcs: list[ReasonCode], _p: object) -> None:
        self.suback = rcs
        self.subscribed.set()

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self.published:
            self.puback[mid] = rc
            self.published.notify_all()

    def wait_connack(self) -> ReasonCode:
        assert self.connected.wait(5) or self.disconnected.wait(5), "no CONNACK"
        assert self.connack is not None
        return self.connack

    def publish(self, topic: str, payload: bytes = b"{}") -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        with self.published:
            assert self.published.wait_for(lambda: info.mid in self.puback, 5), "no PUBACK"
            return self.puback[info.mid]

    def subscribe(self, topic: str) -> ReasonCode:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(5), "no SUBACK"
        return self.suback[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


def test_device_speaks_only_for_itself(sbroker: Mosquitto, admin: DynsecClient, peers: list[Peer]) -> None:
    a = provision.provision_device(admin, "dev-a", sbroker.url)
    b = provision.provision_device(admin, "dev-b", sbroker.url)
    ingest = provision.provision_service(admin, "svc-ingest-1", "svc-ingest", sbroker.url)

    cloud = Peer(sbroker.port, ingest.username, ingest.password, "ingest-1")
    peers.append(cloud)
    assert not cloud.wait_connack().is_failure
    assert not cloud.subscribe("$share/ingest/mf/v1/+/up/#").is_failure

    dev_a = Peer(sbroker.port, a.username, a.password, "dev-a")
    peers.append(dev_a)
    assert not dev_a.wait_connack().is_failure
    # its own uplink is accepted and reaches the ingest service
    assert not dev_a.publish("mf/v1/dev-a/up/status", b"own").is_failure
    # another device's uplink is refused (PUBACK 135 Not authorized) and never delivered
    assert dev_a.publish("mf/v1/dev-b/up/status", b"forged").value == 135
    # reading another device's downlink, the whole tree, or the uplinks is refused
    assert dev_a.subscribe("mf/v1/dev-b/down/#").value == 135
    assert dev_a.subscribe("#").value == 135
    assert dev_a.subscribe("mf/v1/+/up/#").value == 135
    assert not dev_a.subscribe("mf/v1/dev-a/down/#").is_failure

    deadline = time.monotonic() + 5
    while not cloud.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cloud.messages == [("mf/v1/dev-a/up/status", b"own")]

    # the broker logs the refused attempts with the offender's identity
    log = (sbroker.workdir / "mosquitto.log").read_text()
    assert "Denied PUBLISH from dev-a" in log

    # B's credentials do not work for A's identity, and unknown devices cannot connect
    wrong = Peer(sbroker.port, "dev-a", b.password, "dev-a-2")
    peers.append(wrong)
    assert wrong.wait_connack().is_failure
    anon = Peer(sbroker.port, None, None, "anon")
    peers.append(anon)
    assert anon.wait_connack().is_failure


def test_revoke_cuts_a_device_off_at_once(sbroker: Mosquitto, admin: DynsecClient, peers: list[Peer]) -> None:
    creds = provision.provision_device(admin, "dev-r", sbroker.url)
    dev = Peer(sbroker.port, creds.username, creds.password, "dev-r")
    peers.append(dev)
    assert not dev.wait_connack().is_failure
    provision.revoke_device(admin, "dev-r")
    assert dev.disconnected.wait(5), "a revoked device must be disconnected at once"
    again = Peer(sbroker.port, creds.username, creds.password, "dev-r-again")
    peers.append(again)
    assert again.wait_connack().is_failure


def test_services_cannot_do_more_than_their_role(
    sbroker: Mosquitto, admin: DynsecClient, peers: list[Peer]
) -> None:
    ingest = provision.provision_service(admin, "svc-ingest-x", "svc-ingest", sbroker.url)
    svc = Peer(sbroker.port, ingest.username, ingest.password, "ingest-x")
    peers.append(svc)
    assert not svc.wait_connack().is_failure
    assert svc.publish("mf/v1/dev-a/down/notice").value == 135  # ingest cannot talk to devices
    assert svc.publish("mf/v1/dev-a/up/status").value == 135  # nor forge telemetry
    assert svc.subscribe("$share/alerts/mf/v1/+/up/#").value == 135  # nor join another group
    assert svc.subscribe("$CONTROL/dynamic-security/#").value == 135  # nor administer the broker


def test_credentials_never_show_their_secret(sbroker: Mosquitto, admin: DynsecClient) -> None:
    creds = provision.provision_device(admin, "dev-s", sbroker.url)
    assert creds.password not in repr(creds)
    assert f"dev-s:{creds.password}@" in creds.url_with_secret()
    with pytest.raises(DynsecError, match="already exists"):
        provision.provision_device(admin, "dev-s", sbroker.url)
