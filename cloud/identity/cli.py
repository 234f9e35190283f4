"""`microfleet devices ...`, `microfleet broker bootstrap`, `microfleet pki init`, `microfleet keys generate`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from cloud.config import CloudConfig

if TYPE_CHECKING:
    from cloud.identity.dynsec import DynsecClient

devices_app = typer.Typer(
    no_args_is_help=True, help="Device identities on the broker: provision, revoke, list."
)
broker_app = typer.Typer(no_args_is_help=True, help="Broker security: roles and service identities.")
pki_app = typer.Typer(no_args_is_help=True, help="The project CA and the broker's TLS certificate.")
keys_app = typer.Typer(no_args_is_help=True, help="Ed25519 signing keys for protocols and firmware.")
console = Console(stderr=True)


def _admin() -> tuple[CloudConfig, DynsecClient]:
    from cloud.identity.dynsec import DynsecClient
    from contract.mqtturl import parse_mqtt_url

    config = CloudConfig.from_env()
    a = parse_mqtt_url(config.broker_admin_url)
    if not a.username or not a.password:
        console.print(
            "[red]Set MICROFLEET_BROKER_ADMIN_URL=mqtt://admin:<password>@host:port[/] "
            "(the dynamic-security admin made by `mosquitto_ctrl dynsec init`)."
        )
        raise typer.Exit(2)
    return config, DynsecClient(config.broker_admin_url, a.username, a.password)


@broker_app.command("bootstrap")
def bootstrap() -> None:
    """Deny by default and create the service roles (svc-ingest, svc-alerts, svc-ota). Safe to repeat:
    existing roles gain the rights added since."""
    from cloud.identity import provision

    _config, admin = _admin()
    with admin:
        provision.bootstrap(admin)
    console.print("[green]broker roles are in place[/]")


@broker_app.command("service")
def service(
    username: str,
    role: str = typer.Option(..., help="svc-ingest, svc-alerts, svc-ota or svc-simulator (load tests only)"),
    password_env: str | None = typer.Option(
        None,
        help="take the password from this environment variable (a deployment's secret) instead of "
        "generating one; an identity that already exists is then left as it is",
    ),
    client_id: str | None = typer.Option(
        None,
        help="bind the identity to this one client id (one identity per process, e.g. svc-ingest-2 "
        "with ingest-2); it must start with a reserved prefix (ingest, alerts, ota, svc, mf-, ...). "
        "Without it the service's processes share the identity and pick their ids (ingest-1..N), "
        "all in the reserved space no device may use",
    ),
) -> None:
    """Create a service identity; prints its credentials once as JSON on stdout."""
    from cloud.identity import policy, provision
    from cloud.identity.dynsec import DynsecError

    if client_id is not None:
        try:
            policy.check_service_client_id(client_id)
        except policy.ReservedIdError as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from None

    password = None
    if password_env:
        password = os.environ.get(password_env)
        if not password:
            console.print(f"[red]{password_env} is not set[/]")
            raise typer.Exit(2)
    config, admin = _admin()
    with admin:
        try:
            creds = provision.provision_service(admin, username, role, config.mqtt_url, password, client_id)
        except DynsecError as exc:
            if password is None or "already exists" not in str(exc):
                raise
            if client_id is not None:  # the binding asked for holds after a re-run, too
                admin.run([{"command": "setClientId", "username": username, "clientid": client_id}])
            console.print(f"{username} exists; left as it is")
            return
    typer.echo(json.dumps({"username": creds.username, "mqtt_url": creds.url_with_secret()}))


@devices_app.command("provision")
def provision_device(
    device_id: str,
    out: Path | None = typer.Option(
        None, help="write the credentials file here (mode 0600) instead of stdout"
    ),
) -> None:
    """Create a device identity that may publish only under its own topics and connect only with client
    id = device id; the secret is shown once. Again for an existing device: a new secret (the old one
    stops working) and the binding repaired. Ids starting with a services' prefix are refused."""
    from cloud.identity import policy, provision
    from contract.errors import TopicError

    try:
        policy.check_device_client_id(device_id)
    except (policy.ReservedIdError, TopicError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    config, admin = _admin()
    with admin:
        creds = provision.provision_device(admin, device_id, config.device_mqtt_url, replace=True)
    text = json.dumps({"device_id": device_id, "mqtt_url": creds.url_with_secret()})
    if out is None:
        typer.echo(text)
    else:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        console.print(f"[green]credentials for {device_id} written to {out}[/]")


@devices_app.command("revoke")
def revoke_device(device_id: str) -> None:
    """Delete a device identity: it is disconnected at once and can no longer connect."""
    from cloud.identity import provision

    _config, admin = _admin()
    with admin:
        provision.revoke_device(admin, device_id)
    console.print(f"[yellow]{device_id} revoked[/]")


@devices_app.command("list")
def list_devices() -> None:
    """Identities known to the broker."""
    _config, admin = _admin()
    with admin:
        for name in admin.list_clients():
            typer.echo(name)


@pki_app.command("init")
def pki_init(out: Path = typer.Option(Path("deploy/certs")), host: list[str] = typer.Option(None)) -> None:
    """Create the project CA and a server certificate for the broker."""
    from cloud.identity.pki import DEFAULT_HOSTS, init_pki

    paths = init_pki(out, tuple(host) if host else DEFAULT_HOSTS)
    for name, path in paths.items():
        console.print(f"{name}: {path}")


@keys_app.command("generate")
def keys_generate(out: Path = typer.Option(..., help="private key file to create (mode 0600)")) -> None:
    """Create an Ed25519 signing key; prints the trusted-key entry (public part) for devices as JSON."""
    import msgspec

    from contract.signing import SigningKey

    if out.exists():
        console.print(f"[red]{out} exists; a signing key is never overwritten[/]")
        raise typer.Exit(1)
    key = SigningKey.generate()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.to_pem())
    typer.echo(msgspec.json.encode(key.trusted()).decode())
