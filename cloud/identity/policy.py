"""Pure policy: the broker roles of microfleet, as Mosquitto dynamic-security commands.

A device may publish only under its own `mf/v1/<id>/up/#` and subscribe only to its own
`mf/v1/<id>/down/#`. Mosquitto 2.0's dynamic-security plugin does not substitute `%u`/`%c` in ACL
topics (checked against 2.0.11), so each device gets a role of its own with literal topics; the
default access for everything else is deny. Cloud services get one role per duty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contract import topics

Command = dict[str, Any]

DEVICE_ROLE_PREFIX = "device:"
ACL_PRIORITY = 10


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


# Service roles: the least each cloud duty needs. Subscriptions are granted on the shared-subscription
# filter of the service's own group only, so a service cannot read outside its group.
SERVICE_ROLES: dict[str, tuple[Acl, ...]] = {
    "svc-ingest": (
        Acl("subscribePattern", topics.shared("ingest", topics.uplink_filter())),
        Acl("publishClientReceive", topics.uplink_filter()),
    ),
    "svc-alerts": (
        Acl("subscribePattern", topics.shared("alerts", topics.uplink_filter())),
        Acl("publishClientReceive", topics.uplink_filter()),
        Acl("publishClientSend", f"{topics.PREFIX}/+/down/notice"),
    ),
    # Load tests only (docker-compose's simulator replicas): one identity speaks for the devices it
    # simulates. Never give it to a real device; real devices get a role of their own (provision_device).
    "svc-simulator": (
        Acl("publishClientSend", f"{topics.PREFIX}/+/up/#"),
        Acl("subscribePattern", f"{topics.PREFIX}/+/down/#"),
        Acl("publishClientReceive", f"{topics.PREFIX}/+/down/#"),
    ),
    "svc-ota": (
        Acl("publishClientSend", f"{topics.PREFIX}/+/down/protocol"),
        Acl("publishClientSend", f"{topics.PREFIX}/+/down/ota"),
    ),
}


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
    role = device_role(device_id)
    return [
        *role_commands(role, device_acls(device_id)),
        {
            "command": "createClient",
            "username": device_id,
            "password": password,
            "textname": f"microfleet device {device_id}",
        },
        {"command": "addClientRole", "username": device_id, "rolename": role, "priority": ACL_PRIORITY},
    ]


def revoke_device(device_id: str) -> list[Command]:
    """Deleting the client disconnects it at once and refuses any later connection."""
    return [
        {"command": "deleteClient", "username": topics.check_device_id(device_id)},
        {"command": "deleteRole", "rolename": device_role(device_id)},
    ]


def provision_service(username: str, role: str, password: str) -> list[Command]:
    if role not in SERVICE_ROLES:
        raise ValueError(f"unknown service role {role!r}; known: {', '.join(sorted(SERVICE_ROLES))}")
    return [
        {
            "command": "createClient",
            "username": username,
            "password": password,
            "textname": f"microfleet service {role}",
        },
        {"command": "addClientRole", "username": username, "rolename": role, "priority": ACL_PRIORITY},
    ]


def bootstrap() -> list[Command]:
    """Default deny, and the service roles. Idempotent together with DynsecClient(tolerate_exists=True)."""
    commands = default_deny()
    for role, acls in SERVICE_ROLES.items():
        commands += role_commands(role, acls)
    return commands
