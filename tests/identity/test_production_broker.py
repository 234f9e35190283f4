"""The production broker helper (tests/support/services.production_broker) and the production ACL on it:
every downlink kind, sent by the service that owns it, reaches the device; every uplink kind reaches the
services' groups; the other services are refused."""

from __future__ import annotations

import re
import threading
import time

from contract import topics
from contract.mqtturl import parse_mqtt_url
from tests.identity.test_broker_acl import Peer
from tests.identity.test_tls import _connect_tls
from tests.support.services import MOSQUITTO_CONF, ProductionBroker

SENDER = {
    topics.Downlink.PROTOCOL: "svc-ota",
    topics.Downlink.OTA: "svc-ota",
    topics.Downlink.NOTICE: "svc-alerts",
    topics.Downlink.GATE: "svc-alerts",
    topics.Downlink.COMMITTED: "svc-ingest",
}


def peer(prod: ProductionBroker, url: str, client_id: str, peers: list[Peer]) -> Peer:
    a = parse_mqtt_url(url)
    p = Peer(prod.port, a.username, a.password, client_id)
    peers.append(p)
    assert not p.wait_connack().is_failure, client_id
    return p


def wait_messages(p: Peer, n: int) -> list[tuple[str, bytes]]:
    deadline = time.monotonic() + 5
    while len(p.messages) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return list(p.messages)


def test_every_downlink_kind_reaches_the_device_from_its_sender_only(
    prod: ProductionBroker, peers: list[Peer]
) -> None:
    dev = peer(prod, prod.device("dev-a"), "dev-a", peers)
    assert not dev.subscribe(topics.downlink_filter("dev-a")).is_failure
    services = {
        name: peer(prod, prod.service_url(name), f"{name[4:]}-1", peers) for name in set(SENDER.values())
    }
    for kind, sender in SENDER.items():
        topic = topics.downlink("dev-a", kind)
        assert not services[sender].publish(topic, kind.value.encode()).is_failure, kind
        for other in services.keys() - {sender}:
            assert services[other].publish(topic, b"forged").value == 0x87, (other, kind)
    got = wait_messages(dev, len(SENDER))
    assert sorted(got) == sorted((topics.downlink("dev-a", k), k.value.encode()) for k in SENDER)


def test_every_uplink_kind_reaches_ingest_and_alerts(prod: ProductionBroker, peers: list[Peer]) -> None:
    ingest = peer(prod, prod.service_url("svc-ingest"), "ingest-1", peers)
    alerts = peer(prod, prod.service_url("svc-alerts"), "alerts-1", peers)
    assert not ingest.subscribe("$share/ingest/mf/v1/+/up/#").is_failure
    assert not alerts.subscribe("$share/alerts/mf/v1/+/up/#").is_failure
    dev = peer(prod, prod.device("dev-a"), "dev-a", peers)
    for kind in topics.Uplink:
        assert not dev.publish(topics.uplink("dev-a", kind), kind.value.encode()).is_failure, kind
    want = sorted((topics.uplink("dev-a", k), k.value.encode()) for k in topics.Uplink)
    assert sorted(wait_messages(ingest, len(want))) == want
    assert sorted(wait_messages(alerts, len(want))) == want
    # a consumer stopping on purpose may leave its group (scale-in): UNSUBACK success, not 0x87
    unsubacks: list[list[object]] = []
    done = threading.Event()

    def on_unsubscribe(_c: object, _u: object, _mid: int, rcs: list[object], _p: object) -> None:
        unsubacks.append(rcs)
        done.set()

    ingest.client.on_unsubscribe = on_unsubscribe
    ingest.client.unsubscribe("$share/ingest/mf/v1/+/up/#")
    assert done.wait(5)
    assert [getattr(rc, "value", rc) for rc in unsubacks[0]] == [0]


def test_the_helper_runs_the_compose_configuration_and_restarts(
    prod: ProductionBroker, peers: list[Peer]
) -> None:
    conf = prod.run_conf()
    real = re.search(r"^autosave_interval (\d+)$", MOSQUITTO_CONF.read_text(), re.M)
    assert real and f"\nautosave_interval {real.group(1)}\n" in conf  # the real save interval
    assert "allow_anonymous false" in conf and "plugin_opt_config_file" in conf
    anon = Peer(prod.port, None, None, "anon")
    peers.append(anon)
    assert anon.wait_connack().is_failure
    assert _connect_tls(prod.tls_port, prod.ca_file, "svc-ota", "ota-secret")

    url = prod.device("dev-r")
    assert prod.device("dev-r") == url  # provisioned once: the same credentials
    ota = peer(prod, prod.service_url("svc-ota"), "ota-1", peers)
    info = ota.client.publish(topics.downlink("dev-r", topics.Downlink.PROTOCOL), b"p", qos=1, retain=True)
    info.wait_for_publish(5)
    assert info.is_published()
    for p in peers:
        p.close()
    peers.clear()

    prod.stop()  # SIGTERM: mosquitto saves on the way out; same ports and data on start
    prod.start()
    dev = peer(prod, url, "dev-r", peers)
    assert not dev.subscribe(topics.downlink_filter("dev-r")).is_failure
    assert wait_messages(dev, 1) == [(topics.downlink("dev-r", topics.Downlink.PROTOCOL), b"p")]
    peers.pop().close()

    prod.stop(kill=True)  # SIGKILL: the identities live in the dynamic-security file, saved on change
    prod.start()
    assert not peer(prod, url, "dev-r", peers).subscribe(topics.downlink_filter("dev-r")).is_failure
