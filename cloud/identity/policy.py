"""Pure policy: the broker roles of microfleet, as Mosquitto dynamic-security commands.

A device may publish only under its own `mf/v1/<id>/up/#` and subscribe only to its own
`mf/v1/<id>/down/#`. Mosquitto 2.0's dynamic-security plugin does not substitute `%u`/`%c` in ACL
topics (checked against 2.0.11), so each device gets a role of its own with literal topics; the
default access for everything else is deny. Cloud services get one role per duty.

Client ids: a device's identity is bound to the client id equal to its device id (the plugin's
per-client `clientid`), so its credentials connect with that id and no other. The cloud's own
processes use client ids in a reserved space (RESERVED_CLIENT_ID_PREFIXES: ingest-1..N, alerts-1..N,
ota-..., mf-admin-...) in which no device may be named, so no device can take over a service's session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contract import topics

Command = dict[str, Any]

DEVICE_ROLE_PREFIX = "device:"
ACL_PRIORITY = 10

# Client ids of the cloud's processes start with one of these (compared case-insensitively); a device
# id that does is refused at provisioning. Services' ids: ingest-<n>, alerts-<n>(-down), ota-<hex>,
# mf-protocols-<hex>, mf-admin-<hex>; the rest keeps room for the API, new services and operators.
RESERVED_CLIENT_ID_PREFIXES = (
    "admin",
    "alerts",
    "api",
    "broker",
    "cloud",
    "ingest",
    "mf-",
    "microfleet",
    "ota",
    "protocols",
    "svc",
)


class ReservedIdError(ValueError):
    """A device id in the space reserved for the cloud's own client ids (or a service id outside it)."""


def is_reserved_client_id(client_id: str) -> bool:
    low = client_id.lower()
    return any(low.startswith(p) for p in RESERVED_CLIENT_ID_PREFIXES)


def check_device_client_id(device_id: str) -> str:
    """A device id that may be provisioned: valid, and not in the services' reserved client-id space."""
    topics.check_device_id(device_id)
    if is_reserved_client_id(device_id):
        raise ReservedIdError(
            f"device id {device_id!r} is reserved for the cloud's own client ids (it starts with one of "
            f"{', '.join(RESERVED_CLIENT_ID_PREFIXES)}): choose another"
        )
    return device_id


def check_service_client_id(client_id: str) -> str:
    """A client id bound to a service identity must lie in the reserved space, where no device can be."""
    if not client_id or not is_reserved_client_id(client_id):
        raise ReservedIdError(
            f"service client id {client_id!r} must start with one of {', '.join(RESERVED_CLIENT_ID_PREFIXES)}"
            " (the space no device may use)"
        )
    return client_id


@dataclass(frozen=True, slots=True)
class Acl:
    acltype: str  # publishClientSend | publishClientReceive | subscribePattern | unsubscribePattern
    topic: str
    allow: bool = True


def device_role(device_id: str) -> str:
    return DEVICE_ROLE_PREFIX + topics.check_device_id(device_id)


def device_acls(device_id: str) -> tuple[Acl, ...]:
    up = f"{topics.PREFIX}/{topics.check_device_id(device_id)}/up/#"
    down = f"{topics.PREFIX}/{device_id}/down/#"
    return (
        Acl("publishClientSend", up),
        Acl("subscribePattern", down),
        Acl("publishClientReceive", down),
        Acl("unsubscribePattern", down),
    )


# Who sends each downlink kind: exactly one service role per kind (tests check every kind has one).
DOWNLINK_SENDERS: dict[topics.Downlink, str] = {
    topics.Downlink.PROTOCOL: "svc-ota",  # the protocol publisher (API, `microfleet protocol`) runs as svc-ota
    topics.Downlink.OTA: "svc-ota",
    topics.Downlink.NOTICE: "svc-alerts",
    topics.Downlink.GATE: "svc-alerts",
    topics.Downlink.COMMITTED: "svc-ingest",  # the end-to-end acknowledgement's commit marks
}


def _sends(role: str) -> tuple[Acl, ...]:
    return tuple(
        Acl("publishClientSend", f"{topics.PREFIX}/+/down/{kind.value}")
        for kind, sender in DOWNLINK_SENDERS.items()
        if sender == role
    )


def _reads_group(group: str) -> tuple[Acl, ...]:
    """Every uplink kind (sync included), through the shared subscription of the service's own group."""
    return (
        Acl("subscribePattern", topics.shared(group, topics.uplink_filter())),
        Acl("publishClientReceive", topics.uplink_filter()),
        Acl("unsubscribePattern", topics.shared(group, topics.uplink_filter())),
    )


def _feeds() -> tuple[Acl, ...]:
    """The alert feed (topics.COMMITTED_FEED): ingest publishes each committed batch there."""
    return (Acl("publishClientSend", topics.COMMITTED_FEED),)


def _reads_feed(group: str) -> tuple[Acl, ...]:
    """The alert feed, through the shared subscription of the service's own group only."""
    return (
        Acl("subscribePattern", topics.shared(group, topics.COMMITTED_FEED)),
        Acl("publishClientReceive", topics.COMMITTED_FEED),
        Acl("unsubscribePattern", topics.shared(group, topics.COMMITTED_FEED)),
    )


# Service roles: the least each cloud duty needs. Subscriptions are granted on the shared-subscription
# filter of the service's own group only, so a service cannot read outside its group.
SERVICE_ROLES: dict[str, tuple[Acl, ...]] = {
    # the alert feed (cloud-internal, docs/decisions/alert-feed.md): svc-ingest publishes it, svc-alerts
    # reads it; no other identity (no device: `_cloud` is no device id) may do either
    "svc-ingest": (*_reads_group("ingest"), *_sends("svc-ingest"), *_feeds()),
    "svc-alerts": (*_reads_group("alerts"), *_sends("svc-alerts"), *_reads_feed("alerts")),
    # Load tests only (docker-compose's simulator replicas): one identity speaks for the devices it
    # simulates. Never give it to a real device; real devices get a role of their own (provision_device).
    "svc-simulator": (
        Acl("publishClientSend", f"{topics.PREFIX}/+/up/#"),
        Acl("subscribePattern", f"{topics.PREFIX}/+/down/#"),
        Acl("publishClientReceive", f"{topics.PREFIX}/+/down/#"),
        Acl("unsubscribePattern", f"{topics.PREFIX}/+/down/#"),
    ),
    "svc-ota": _sends("svc-ota"),
}


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching ('+' one level, '#' the rest); a `$share/<group>/` prefix is stripped."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    f, t = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def allows(acls: tuple[Acl, ...], acltype: str, topic: str) -> bool:
    return any(a.allow and a.acltype == acltype and topic_matches(a.topic, topic) for a in acls)


def _acl_command(command: str, role: str, acl: Acl) -> Command:
    return {
        "command": command,
        "rolename": role,
        "acltype": acl.acltype,
        "topic": acl.topic,
        "allow": acl.allow,
        "priority": ACL_PRIORITY,
    }


def default_deny() -> list[Command]:
    """Everything not granted by a role is refused (the plugin's default allows receive/unsubscribe)."""
    return [
        {
            "command": "setDefaultACLAccess",
            "acls": [
                {"acltype": t, "allow": False}
                for t in ("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe")
            ],
        }
    ]


def role_commands(role: str, acls: tuple[Acl, ...]) -> list[Command]:
    return [{"command": "createRole", "rolename": role}] + [_acl_command("addRoleACL", role, a) for a in acls]


def provision_device(device_id: str, password: str) -> list[Command]:
    """The device's role and identity, bound to client id = device id. Run with tolerate_exists: if the
    identity existed, `rebind_device` makes it match (re-provisioning is idempotent). The role is given
    by `grant_device_role` (the plugin answers "Internal error" to a role the client already has)."""
    role = device_role(check_device_client_id(device_id))
    return [
        *role_commands(role, device_acls(device_id)),
        {
            "command": "createClient",
            "username": device_id,
            "password": password,
            "clientid": device_id,
            "textname": f"microfleet device {device_id}",
        },
    ]


def grant_device_role(device_id: str) -> list[Command]:
    return [
        {
            "command": "addClientRole",
            "username": device_id,
            "rolename": device_role(device_id),
            "priority": ACL_PRIORITY,
        }
    ]


def rebind_device(device_id: str, password: str | None = None) -> list[Command]:
    """For an identity that existed already: the client-id binding, and with `password` a new secret
    (the broker disconnects a client whose credentials change)."""
    check_device_client_id(device_id)
    commands: list[Command] = [{"command": "setClientId", "username": device_id, "clientid": device_id}]
    if password is not None:
        commands.append({"command": "setClientPassword", "username": device_id, "password": password})
    return commands


def revoke_device(device_id: str) -> list[Command]:
    """Deleting the client disconnects it at once and refuses any later connection."""
    return [
        {"command": "deleteClient", "username": topics.check_device_id(device_id)},
        {"command": "deleteRole", "rolename": device_role(device_id)},
    ]


def provision_service(username: str, role: str, password: str, client_id: str | None = None) -> list[Command]:
    """A service identity. With `client_id` (in the reserved space) it connects with that id only: one
    identity per process. Without, its processes choose their ids (ingest-1..N share svc-ingest); the
    reserved space keeps devices off them either way."""
    if role not in SERVICE_ROLES:
        raise ValueError(f"unknown service role {role!r}; known: {', '.join(sorted(SERVICE_ROLES))}")
    client: Command = {
        "command": "createClient",
        "username": username,
        "password": password,
        "textname": f"microfleet service {role}",
    }
    if client_id is not None:
        client["clientid"] = check_service_client_id(client_id)
    return [
        client,
        {"command": "addClientRole", "username": username, "rolename": role, "priority": ACL_PRIORITY},
    ]


def bootstrap() -> list[Command]:
    """Default deny, and the service roles. Idempotent together with DynsecClient(tolerate_exists=True):
    a role that exists gains the ACLs added since (e.g. svc-alerts' gate, svc-ingest's committed)."""
    commands = default_deny()
    for role, acls in SERVICE_ROLES.items():
        commands += role_commands(role, acls)
    return commands
