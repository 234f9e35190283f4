"""Pure policy for the NATS tier: the SAME roles as the Mosquitto tier (cloud.identity.policy), rendered as
NATS users with subject permissions (docs/decisions/nats-tier.md, decision 7).

One source of truth: a device's rights come from `policy.device_acls`, a service's from
`policy.SERVICE_ROLES` (whose downlink rights come from `policy.DOWNLINK_SENDERS`), translated here. What
the translation adds, each measured against nats-server 2.9.10's MQTT gateway (tests/nats/
test_nats_identity.py):

- MQTT topic -> NATS subject: `/` becomes `.`, `+` `*`, `#` `>`. The gateway refuses a topic with a `.`
  (2.9; 2.10 maps it to `//`), so a device id with a `.` cannot be used on this tier: refused here.
- A QoS 1 subscription is delivered through an internal subscription on `$MQTT.sub.<nuid>` made in the
  subscriber's name: without subscribe rights on `$MQTT.sub.>` the SUBACK fails. Those rights would let a
  client of the NATS protocol read every QoS 1 delivery, so every identity that holds them may connect
  over MQTT only (`allowed_connection_types: ["MQTT"]`).
- A subscription to `a/b/#` is two subscriptions on the gateway, `a.b.>` and `a.b` (MQTT's `#` also
  matches the parent level): both are granted.
- Shared subscriptions ($share/<group>/...) do not exist on the gateway: ingest and the alert engine read
  JetStream instead, through ONE durable per service group on `$MQTT_msgs` (DURABLES), and get only the
  JetStream API subjects of that durable, over the NATS protocol, and their MQTT publish rights for their
  downlink kinds (commit marks, notices, gates) through the gateway.
- Retained messages are kept by the gateway only while their publisher's user exists and may publish
  there: a reload that drops or narrows the user deletes them (server/mqtt.go mqttCheckPubRetainedPerms).
  So service users are never renamed casually: svc-ota owns every retained protocol and firmware job.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud.identity import policy

MQTT_STREAM = "$MQTT_msgs"
MQTT_DELIVERY = "$MQTT.sub.>"  # the gateway's QoS 1 delivery inboxes
INBOX = "_INBOX.>"  # replies to a service's JetStream API requests (nats-py's default inbox prefix)

# Which durable consumer on $MQTT_msgs each service's processes share (they replace the MQTT tier's
# shared-subscription groups $share/ingest and $share/alerts: the same group names).
DURABLES: dict[str, str] = {"svc-ingest": "ingest", "svc-alerts": "alerts"}
# The alert feed's durable (MICROFLEET_ALERT_FEED=committed): ingest publishes each committed batch through
# the gateway on `mf/v1/_cloud/committed` (its MQTT publish right comes from policy.SERVICE_ROLES), which
# lands in $MQTT_msgs as `$MQTT.msgs.mf.v1._cloud.committed`; the alert engine reads it from this durable.
FEED_DURABLES: dict[str, str] = {"svc-alerts": "alerts-feed"}

# An operator's identity to create the durables (before any device connects: $MQTT_msgs is an interest
# stream) and inspect the streams; NATS protocol only, no MQTT, no device subject.
ADMIN_ROLE = "nats-admin"

CONN_MQTT = "MQTT"
CONN_NATS = "STANDARD"


class NatsIdError(ValueError):
    """An identity the NATS tier cannot represent (e.g. a device id with a '.')."""


@dataclass(frozen=True, slots=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    connection_types: tuple[str, ...]


def subject(topic_filter: str) -> str:
    """The NATS subject the gateway uses for an MQTT topic or filter (no `$share/`, no `.`, no space)."""
    if topic_filter.startswith("$share/"):
        raise NatsIdError(f"{topic_filter!r}: the NATS MQTT gateway has no shared subscriptions")
    if "." in topic_filter or " " in topic_filter or not topic_filter:
        raise NatsIdError(f"topic {topic_filter!r}: the NATS MQTT gateway refuses '.' and ' ' in topics")
    levels = topic_filter.split("/")
    if any(not level for level in levels):
        raise NatsIdError(f"topic {topic_filter!r}: empty topic levels are not used by microfleet")
    return ".".join({"+": "*", "#": ">"}.get(level, level) for level in levels)


def _subscribe_subjects(topic_filter: str) -> tuple[str, ...]:
    """`a/b/#` is subscribed on the gateway as `a.b.>` and `a.b`: grant both."""
    s = subject(topic_filter)
    return (s[:-2], s) if s.endswith(".>") else (s,)


def check_device_id(device_id: str) -> str:
    """A device id the NATS tier can carry: the Mosquitto tier's rules, and no '.' in it."""
    policy.check_device_client_id(device_id)
    if "." in device_id:
        raise NatsIdError(
            f"device id {device_id!r}: the NATS MQTT gateway refuses topics with a '.' (nats-server 2.9; "
            "2.10 rewrites it), so this tier takes device ids of letters, digits, '_' and '-' only"
        )
    return device_id


def _from_acls(acls: tuple[policy.Acl, ...]) -> tuple[list[str], list[str]]:
    """MQTT ACLs as NATS publish and subscribe subjects. publishClientReceive/unsubscribePattern have no
    NATS counterpart (a NATS subscriber receives what it may subscribe to); shared reads are skipped here
    (a service reads JetStream instead: `_durable`)."""
    pub: list[str] = []
    sub: list[str] = []
    for acl in acls:
        if not acl.allow or acl.topic.startswith("$share/"):
            continue
        if acl.acltype == "publishClientSend":
            pub.append(subject(acl.topic))
        elif acl.acltype == "subscribePattern":
            sub.extend(_subscribe_subjects(acl.topic))
    return pub, sub


def device_permissions(device_id: str) -> Permissions:
    """Publish `mf.v1.<id>.up.>`, subscribe `mf.v1.<id>.down(.>)` and the gateway's delivery inboxes;
    over MQTT only."""
    pub, sub = _from_acls(policy.device_acls(check_device_id(device_id)))
    return Permissions(tuple(pub), (*sub, MQTT_DELIVERY), (CONN_MQTT,))


def _durable(name: str) -> tuple[str, ...]:
    """What a process pulling from durable `name` on $MQTT_msgs publishes: the stream's and its info,
    creating it when missing (cloud.runtime.jetstream.ensure_durable; both forms of the create API: 2.9's
    DURABLE.CREATE and 2.10's CONSUMER.CREATE with its filter), its next batch, and its acknowledgements.
    Never another durable, never a delete: a scale-in cannot strand the others' messages."""
    return (
        f"$JS.API.STREAM.INFO.{MQTT_STREAM}",
        f"$JS.API.CONSUMER.INFO.{MQTT_STREAM}.{name}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{MQTT_STREAM}.{name}",
        f"$JS.API.CONSUMER.CREATE.{MQTT_STREAM}.{name}",
        f"$JS.API.CONSUMER.CREATE.{MQTT_STREAM}.{name}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{MQTT_STREAM}.{name}",
        f"$JS.ACK.{MQTT_STREAM}.{name}.>",
    )


def service_permissions(role: str) -> Permissions:
    """A service role of policy.SERVICE_ROLES on this tier."""
    if role == ADMIN_ROLE:
        return Permissions(("$JS.API.>",), (INBOX,), (CONN_NATS,))
    if role not in policy.SERVICE_ROLES:
        known = ", ".join(sorted((*policy.SERVICE_ROLES, ADMIN_ROLE)))
        raise ValueError(f"unknown service role {role!r}; known: {known}")
    pub, sub = _from_acls(policy.SERVICE_ROLES[role])
    if role in DURABLES:  # reads device traffic from JetStream (NATS protocol), sends downlinks via MQTT
        durables = [_durable(DURABLES[role])]
        if role in FEED_DURABLES:
            durables.append(_durable(FEED_DURABLES[role]))
        reads = tuple(dict.fromkeys(s for d in durables for s in d))
        return Permissions((*pub, *reads), (*sub, INBOX), (CONN_NATS, CONN_MQTT))
    if sub:  # subscribes through the gateway (svc-simulator): MQTT only, like a device
        return Permissions(tuple(pub), (*sub, MQTT_DELIVERY), (CONN_MQTT,))
    return Permissions(tuple(pub), (), (CONN_MQTT,))


def service_roles() -> tuple[str, ...]:
    return (*policy.SERVICE_ROLES, ADMIN_ROLE)
