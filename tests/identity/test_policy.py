"""The broker policy, checked without a broker: every downlink kind has a sender, every uplink kind a
reader, devices are bound to their own client id, and no device may take a service's client id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.identity import policy
from contract import topics
from contract.errors import TopicError

SERVICES = ("svc-ingest", "svc-alerts", "svc-ota")


def senders(kind: topics.Downlink) -> list[str]:
    topic = topics.downlink("dev-1", kind)
    return [r for r in SERVICES if policy.allows(policy.SERVICE_ROLES[r], "publishClientSend", topic)]


def readers(kind: topics.Uplink) -> list[str]:
    topic = topics.uplink("dev-1", kind)
    return [
        r
        for r in SERVICES
        if policy.allows(policy.SERVICE_ROLES[r], "publishClientReceive", topic)
        and policy.allows(policy.SERVICE_ROLES[r], "subscribePattern", topic)
    ]


@pytest.mark.parametrize("kind", list(topics.Downlink))
def test_every_downlink_kind_has_exactly_its_sender(kind: topics.Downlink) -> None:
    assert senders(kind) == [policy.DOWNLINK_SENDERS[kind]]


def test_the_senders_are_the_services_that_send() -> None:
    d = topics.Downlink
    assert {k for k, r in policy.DOWNLINK_SENDERS.items() if r == "svc-alerts"} == {d.NOTICE, d.GATE}
    assert {k for k, r in policy.DOWNLINK_SENDERS.items() if r == "svc-ingest"} == {d.COMMITTED}
    assert {k for k, r in policy.DOWNLINK_SENDERS.items() if r == "svc-ota"} == {d.PROTOCOL, d.OTA}


@pytest.mark.parametrize("kind", list(topics.Uplink))
def test_every_uplink_kind_has_a_reader(kind: topics.Uplink) -> None:
    assert "svc-ingest" in readers(kind)  # ingest stores everything, and answers sync with a mark


def test_services_read_only_their_own_group_and_send_no_uplink() -> None:
    ingest, alerts = policy.SERVICE_ROLES["svc-ingest"], policy.SERVICE_ROLES["svc-alerts"]
    up = topics.uplink_filter()
    assert policy.Acl("subscribePattern", topics.shared("ingest", up)) in ingest
    assert policy.Acl("unsubscribePattern", topics.shared("ingest", up)) in ingest  # leaves on scale-in
    assert not any(a.topic.startswith("$share/alerts/") for a in ingest)
    assert not any(a.topic.startswith("$share/ingest/") for a in alerts)
    for role in SERVICES:
        assert not policy.allows(
            policy.SERVICE_ROLES[role], "publishClientSend", topics.uplink("d", topics.Uplink.STATUS)
        )


def test_a_device_sends_only_its_uplinks_and_reads_only_its_downlinks() -> None:
    acls = policy.device_acls("dev-a")
    for kind in topics.Uplink:
        assert policy.allows(acls, "publishClientSend", topics.uplink("dev-a", kind))
        assert not policy.allows(acls, "publishClientSend", topics.uplink("dev-b", kind))
    for kind in topics.Downlink:
        assert policy.allows(acls, "publishClientReceive", topics.downlink("dev-a", kind))
        assert not policy.allows(acls, "publishClientReceive", topics.downlink("dev-b", kind))
        assert not policy.allows(acls, "publishClientSend", topics.downlink("dev-a", kind))


def test_a_device_identity_is_bound_to_its_own_client_id() -> None:
    create = next(c for c in policy.provision_device("dev-a", "pw") if c["command"] == "createClient")
    assert create["clientid"] == "dev-a" == create["username"]
    assert {"command": "setClientId", "username": "dev-a", "clientid": "dev-a"} in policy.rebind_device(
        "dev-a"
    )


@pytest.mark.parametrize(
    "device_id",
    [
        "ingest-1",
        "ingest",
        "Ingest-2",
        "alerts-1",
        "alerts-1-down",
        "ota-3f2a",
        "svc-ingest",
        "mf-admin-1",
        "mf-protocols-9",
        "admin",
        "api-1",
        "microfleet",
        "protocols-1",
        "cloud-x",
        "broker",
    ],
)
def test_service_client_ids_are_refused_as_device_ids(device_id: str) -> None:
    with pytest.raises(policy.ReservedIdError):
        policy.provision_device(device_id, "pw")


reserved_ids = st.tuples(
    st.sampled_from(policy.RESERVED_CLIENT_ID_PREFIXES), st.from_regex(r"\A[A-Za-z0-9_.-]{0,20}\Z")
).map(lambda t: "".join(c.upper() if i % 2 else c for i, c in enumerate(t[0])) + t[1])


@given(reserved_ids)
def test_any_id_in_the_reserved_space_is_refused_whatever_its_case(device_id: str) -> None:
    with pytest.raises(policy.ReservedIdError):
        policy.check_device_client_id(device_id)


@given(st.from_regex(rf"\A{topics.DEVICE_ID_PATTERN}\Z"))
def test_a_valid_device_id_is_either_reserved_or_provisionable(device_id: str) -> None:
    reserved = any(device_id.lower().startswith(p) for p in policy.RESERVED_CLIENT_ID_PREFIXES)
    if reserved:
        with pytest.raises(policy.ReservedIdError):
            policy.check_device_client_id(device_id)
    else:
        assert policy.check_device_client_id(device_id) == device_id


def test_invalid_device_ids_are_refused() -> None:
    with pytest.raises(TopicError):
        policy.check_device_client_id("dev/a")


def test_a_bound_service_client_id_must_lie_in_the_reserved_space() -> None:
    create = policy.provision_service("svc-ingest-2", "svc-ingest", "pw", client_id="ingest-2")[0]
    assert create["clientid"] == "ingest-2"
    assert "clientid" not in policy.provision_service("svc-ingest", "svc-ingest", "pw")[0]
    with pytest.raises(policy.ReservedIdError):
        policy.provision_service("svc-ingest-2", "svc-ingest", "pw", client_id="dev-7")
    with pytest.raises(ValueError, match="unknown service role"):
        policy.provision_service("x", "svc-nope", "pw")


@pytest.mark.parametrize(
    ("pattern", "topic", "match"),
    [
        ("mf/v1/+/down/gate", "mf/v1/d/down/gate", True),
        ("mf/v1/+/down/gate", "mf/v1/d/down/notice", False),
        ("mf/v1/+/up/#", "mf/v1/d/up/sync", True),
        ("$share/ingest/mf/v1/+/up/#", "mf/v1/d/up/samples", True),
        ("mf/v1/d/down/#", "mf/v1/e/down/gate", False),
        ("mf/v1/+/down/gate", "mf/v1/d/down/gate/x", False),
    ],
)
def test_topic_matches(pattern: str, topic: str, match: bool) -> None:
    assert policy.topic_matches(pattern, topic) is match


def test_the_alert_feed_is_published_by_ingest_and_read_by_alerts_only() -> None:
    """topics.COMMITTED_FEED (docs/decisions/alert-feed.md): svc-ingest publishes it, svc-alerts reads it
    through its own group; no other service, and no device (`_cloud` is no device id), does either."""
    feed = topics.COMMITTED_FEED
    roles = policy.SERVICE_ROLES
    assert [r for r in roles if policy.allows(roles[r], "publishClientSend", feed)] == ["svc-ingest"]
    assert [r for r in roles if policy.allows(roles[r], "publishClientReceive", feed)] == ["svc-alerts"]
    assert policy.Acl("subscribePattern", topics.shared("alerts", feed)) in roles["svc-alerts"]
    assert not any(a.topic == feed and a.acltype == "subscribePattern" for a in roles["svc-alerts"])
    with pytest.raises(TopicError):
        topics.check_device_id(topics.CLOUD_LEVEL)
    for device in ("dev-a", "cloud", "x"):
        acls = policy.device_acls(device)
        assert not any(policy.allows(acls, t, feed) for t in ("publishClientSend", "publishClientReceive"))
    # no uplink filter a service or device reads covers it (ingest would quarantine it as a bad topic)
    assert not policy.topic_matches(topics.uplink_filter(), feed)
