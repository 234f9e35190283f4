"""Provision and revoke identities on the broker. Secrets are generated here, returned once, never logged."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cloud.identity import policy
from cloud.identity.dynsec import DynsecClient, DynsecError
from contract.mqtturl import parse_mqtt_url

SECRET_BYTES = 24


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str
    mqtt_url: str

    def __repr__(self) -> str:  # keep secrets out of logs and tracebacks
        return f"Credentials(username={self.username!r}, password='***', mqtt_url={self.mqtt_url!r})"

    def url_with_secret(self) -> str:
        """The broker URL with these credentials in it, for the agent's MICROFLEET_MQTT_URL."""
        a = parse_mqtt_url(self.mqtt_url)
        scheme = "mqtts" if a.tls else "mqtt"
        return f"{scheme}://{self.username}:{self.password}@{a.host}:{a.port}"


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def bootstrap(client: DynsecClient) -> None:
    """Default deny and the service roles; safe to run again."""
    client.run(policy.bootstrap(), tolerate_exists=True)


def provision_device(
    client: DynsecClient, device_id: str, device_mqtt_url: str, *, replace: bool = False
) -> Credentials:
    """A device identity bound to client id = device id, with a new secret. For a device that exists
    already, its role and ACLs are completed and its client id bound (idempotent repair), then with
    `replace` its secret is replaced (the old one stops working) and the new credentials returned;
    without, DynsecError "already exists" is raised. A device id in the services' reserved client-id
    space is refused (policy.ReservedIdError) before anything reaches the broker."""
    password = new_secret()
    answers = client.run(policy.provision_device(device_id, password), tolerate_exists=True)
    created = not any("error" in a for a in answers if a.get("command") == "createClient")
    if created:
        client.run(policy.grant_device_role(device_id))
        return Credentials(device_id, password, device_mqtt_url)
    got = client.run([{"command": "getClient", "username": device_id}])
    roles = got[0].get("data", {}).get("client", {}).get("roles", []) if got else []
    has_role = any(r.get("rolename") == policy.device_role(device_id) for r in roles)
    client.run(
        policy.rebind_device(device_id, password if replace else None)
        + ([] if has_role else policy.grant_device_role(device_id))
    )
    if not replace:
        raise DynsecError(f"the broker refused: createClient: client {device_id!r} already exists", answers)
    return Credentials(device_id, password, device_mqtt_url)


def revoke_device(client: DynsecClient, device_id: str) -> None:
    client.run(policy.revoke_device(device_id))


def provision_service(
    client: DynsecClient,
    username: str,
    role: str,
    service_mqtt_url: str,
    password: str | None = None,
    client_id: str | None = None,
) -> Credentials:
    """A service identity; `password` lets a deployment choose it (compose passes it from its secrets),
    otherwise a new secret is generated. `client_id` binds it to one client id of the reserved space
    (one identity per process); without it the service's processes choose their ids (ingest-1..N).
    Raises DynsecError "already exists" for an existing identity, which is left as it is."""
    password = password or new_secret()
    client.run(policy.provision_service(username, role, password, client_id))
    return Credentials(username, password, service_mqtt_url)
