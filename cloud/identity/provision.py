"""Provision and revoke identities on the broker. Secrets are generated here, returned once, never logged."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cloud.identity import policy
from cloud.identity.dynsec import DynsecClient
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


def provision_device(client: DynsecClient, device_id: str, device_mqtt_url: str) -> Credentials:
    password = new_secret()
    client.run(policy.provision_device(device_id, password))
    return Credentials(device_id, password, device_mqtt_url)


def revoke_device(client: DynsecClient, device_id: str) -> None:
    client.run(policy.revoke_device(device_id))


def provision_service(
    client: DynsecClient, username: str, role: str, service_mqtt_url: str, password: str | None = None
) -> Credentials:
    """A service identity; `password` lets a deployment choose it (compose passes it from its secrets),
    otherwise a new secret is generated. Safe to repeat: an existing identity is left as it is."""
    password = password or new_secret()
    client.run(policy.provision_service(username, role, password))
    return Credentials(username, password, service_mqtt_url)
