"""On the production broker (compose entrypoint, dynamic security, service identities): a device's
credentials work with its own client id only, so it can neither take over a service consumer's session
nor kick another device offline; a service's client ids cannot be provisioned as devices."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.identity import policy, provision
from cloud.identity.dynsec import DynsecClient, DynsecError
from contract.mqtturl import parse_mqtt_url
from tests.identity.test_broker_acl import Peer
from tests.support.services import ADMIN_PASSWORD, ProductionBroker


def peer(prod: ProductionBroker, url: str, client_id: str, peers: list[Peer]) -> Peer:
    a = parse_mqtt_url(url)
    p = Peer(prod.port, a.username, a.password, client_id)
    peers.append(p)
    return p


class Consumer:
    """An ingest consumer with a persistent session (clean_start false, session expiry), as ingest runs."""

    def __init__(self, prod: ProductionBroker, client_id: str = "ingest-1") -> None:
        a = parse_mqtt_url(prod.service_url("svc-ingest"))
        self.port = prod.port
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(a.username, a.password)
        self.received: list[bytes] = []
        self.cond = threading.Condition()
        self.session_present: bool | None = None
        self.connected = threading.Event()
        self.disconnects = 0
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def _on_connect(
        self, c: mqtt.Client, _u: object, flags: mqtt.ConnectFlags, rc: object, _p: object
    ) -> None:
        self.session_present = flags.session_present
        self.connected.set()

    def _on_disconnect(self, *_a: object) -> None:
        self.disconnects += 1

    def _on_message(self, _c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.received.append(m.payload)
            self.cond.notify_all()

    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.connected.clear()
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self.connected.wait(5), "the consumer did not connect"

    def subscribe(self) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_a: done.set()
        self.client.subscribe("$share/ingest/mf/v1/+/up/#", qos=1)
        assert done.wait(5)

    def wait_for(self, n: int) -> list[bytes]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.received) >= n, 10), self.received
            return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_device_connects_with_its_own_client_id_only(prod: ProductionBroker, peers: list[Peer]) -> None:
    urls = prod.devices(["dev-a", "dev-b"])
    dev_b = peer(prod, urls["dev-b"], "dev-b", peers)
    assert not dev_b.wait_connack().is_failure

    for other in ("ingest-1", "alerts-1", "ota-1", "dev-b", "dev-a-2", "mf-admin-1"):
        p = peer(prod, urls["dev-a"], other, peers)
        rc = p.wait_connack()
        assert rc.is_failure and rc.value in (0x86, 0x87), (other, rc)  # bad credentials / not authorized
    # dev-b was never kicked by the attempts on its id, and dev-a connects as itself
    assert not dev_b.disconnected.is_set()
    assert not peer(prod, urls["dev-a"], "dev-a", peers).wait_connack().is_failure


def test_a_consumer_session_survives_a_device_claiming_its_client_id(
    prod: ProductionBroker, peers: list[Peer]
) -> None:
    url = prod.device("dev-a")
    consumer = Consumer(prod)
    consumer.connect()
    consumer.subscribe()
    # the consumer is away (crashed) with its session kept; messages queue for it
    consumer.close()
    dev = peer(prod, url, "dev-a", peers)
    assert not dev.wait_connack().is_failure
    for i in range(50):
        assert not dev.publish("mf/v1/dev-a/up/status", b"%d" % i).is_failure
    # the device tries to take the consumer's session with a clean start: refused, the queue intact
    thief = peer(prod, url, "ingest-1", peers)
    assert thief.wait_connack().is_failure
    again = Consumer(prod)
    again.connect()
    try:
        assert again.session_present is True
        assert sorted(again.wait_for(50), key=int) == [b"%d" % i for i in range(50)]
    finally:
        again.close()


def test_a_live_consumer_is_not_kicked_by_a_device_using_its_id(
    prod: ProductionBroker, peers: list[Peer]
) -> None:
    url = prod.device("dev-a")
    consumer = Consumer(prod)
    consumer.connect()
    consumer.subscribe()
    try:
        assert peer(prod, url, "ingest-1", peers).wait_connack().is_failure
        dev = peer(prod, url, "dev-a", peers)
        assert not dev.wait_connack().is_failure
        assert not dev.publish("mf/v1/dev-a/up/status", b"after").is_failure
        assert consumer.wait_for(1) == [b"after"]
        assert consumer.disconnects == 0
    finally:
        consumer.close()


def test_reprovisioning_repairs_the_binding_and_reserved_ids_are_refused(
    prod: ProductionBroker, peers: list[Peer]
) -> None:
    with DynsecClient(prod.url, "admin", ADMIN_PASSWORD) as admin:
        # an identity made before client ids were bound (no clientid), as an upgraded broker holds
        role = policy.device_role("dev-old")
        admin.run(policy.role_commands(role, policy.device_acls("dev-old")))
        admin.run([{"command": "createClient", "username": "dev-old", "password": "old-pw"}])
        admin.run(policy.grant_device_role("dev-old"))
        assert not peer(prod, "mqtt://dev-old:old-pw@h:1", "ingest-1", peers).wait_connack().is_failure
        peers.pop().close()

        # provisioning it again without replace: refused as existing, but the binding is repaired
        with pytest.raises(DynsecError, match="already exists"):
            provision.provision_device(admin, "dev-old", prod.url)
        assert peer(prod, "mqtt://dev-old:old-pw@h:1", "ingest-1", peers).wait_connack().is_failure
        assert not peer(prod, "mqtt://dev-old:old-pw@h:1", "dev-old", peers).wait_connack().is_failure

        # with replace: a new secret (the old one stops working), still bound; repeating is harmless
        creds = provision.provision_device(admin, "dev-old", prod.url, replace=True)
        creds = provision.provision_device(admin, "dev-old", prod.url, replace=True)
        assert peer(prod, "mqtt://dev-old:old-pw@h:1", "dev-old", peers).wait_connack().is_failure
        assert peer(prod, creds.url_with_secret(), "alerts-1", peers).wait_connack().is_failure
        assert not peer(prod, creds.url_with_secret(), "dev-old", peers).wait_connack().is_failure

        with pytest.raises(policy.ReservedIdError):
            provision.provision_device(admin, "ingest-1", prod.url)
        assert "ingest-1" not in admin.list_clients()


def test_a_service_identity_bound_to_one_client_id(prod: ProductionBroker, peers: list[Peer]) -> None:
    with DynsecClient(prod.url, "admin", ADMIN_PASSWORD) as admin:
        creds = provision.provision_service(admin, "svc-ingest-2", "svc-ingest", prod.url, "pw2", "ingest-2")
    assert peer(prod, creds.url_with_secret(), "ingest-1", peers).wait_connack().is_failure
    assert not peer(prod, creds.url_with_secret(), "ingest-2", peers).wait_connack().is_failure
    # the shared identity: its processes choose their ids (ingest-1..3)
    for i in (1, 2, 3):
        assert not peer(prod, prod.service_url("svc-ingest"), f"ingest-{i}", peers).wait_connack().is_failure
