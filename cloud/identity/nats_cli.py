"""`microfleet nats-auth ...`: the NATS tier's identities (cloud/identity/nats_users.py).

Each change updates the store, renders the include to every `--auth` file and, with `--reload-pid`, tells
those nodes to reload (SIGHUP). In docker-compose the nodes share one include on a volume and are told
with `docker compose kill -s HUP nats-1 nats-2 nats-3` (deploy/README.md, "Cluster profile").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    no_args_is_help=True,
    help="The NATS tier's users: devices and services with subject permissions, revocation by reload.",
)
console = Console(stderr=True)

Store = Annotated[
    Path, typer.Option("--store", help="The identity store (JSON, mode 0600: names, roles, bcrypt hashes).")
]
Auth = Annotated[
    list[Path] | None,
    typer.Option(
        "--auth",
        help="The include nats-server reads (repeat: one per node). Default: auth.conf next to the store.",
    ),
]
Pids = Annotated[
    list[int] | None, typer.Option("--reload-pid", help="SIGHUP this nats-server after writing (repeat).")
]


def _apply(store: Path, auth: list[Path] | None, pids: list[int] | None) -> None:
    from cloud.identity.nats_users import NatsIdentities, reload, write_auth

    identities = NatsIdentities.load(store)
    write_auth(identities, auth or [store.with_name("auth.conf")])
    gone = reload(pids or [])
    if gone:
        console.print(f"[red]not running: {', '.join(map(str, gone))} (the include is written)[/]")
        raise typer.Exit(1)


@app.command("device")
def device(
    device_id: str,
    mqtt_url: Annotated[str, typer.Option(help="The gateway devices connect to, e.g. mqtt://nats-1:1883.")],
    store: Store = Path("nats-identities.json"),
    auth: Auth = None,
    reload_pid: Pids = None,
) -> None:
    """Provision a device (or give it a new secret): it may publish only mf/v1/<id>/up/# and read only
    mf/v1/<id>/down/#, over MQTT only. Prints its credentials once as JSON on stdout."""
    from cloud.identity.nats_policy import NatsIdError
    from cloud.identity.nats_users import NatsIdentities
    from cloud.identity.policy import ReservedIdError
    from cloud.identity.provision import Credentials
    from contract.errors import TopicError

    identities = NatsIdentities.load(store)
    try:
        secret = identities.provision_device(device_id)
    except (NatsIdError, ReservedIdError, TopicError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    identities.save(store)
    _apply(store, auth, reload_pid)
    creds = Credentials(device_id, secret, mqtt_url)
    typer.echo(json.dumps({"device_id": device_id, "mqtt_url": creds.url_with_secret()}))


@app.command("revoke")
def revoke(
    device_id: str, store: Store = Path("nats-identities.json"), auth: Auth = None, reload_pid: Pids = None
) -> None:
    """Remove a device: on reload its connections are closed and it can no longer connect to any node."""
    from cloud.identity.nats_users import NatsIdentities

    identities = NatsIdentities.load(store)
    if not identities.revoke_device(device_id):
        console.print(f"[yellow]{device_id} was not provisioned[/]")
    identities.save(store)
    _apply(store, auth, reload_pid)
    console.print(f"[yellow]{device_id} revoked[/]")


@app.command("service")
def service(
    username: str,
    role: Annotated[str, typer.Option(help="svc-ingest, svc-alerts, svc-ota, svc-simulator or nats-admin.")],
    password_env: Annotated[
        str | None,
        typer.Option(help="Take the password from this environment variable; else one is printed once."),
    ] = None,
    store: Store = Path("nats-identities.json"),
    auth: Auth = None,
    reload_pid: Pids = None,
) -> None:
    """Create or update a service user with its role's least rights. Never rename svc-ota: the gateway
    deletes retained messages whose publisher's user is gone."""
    from cloud.identity.cli import password_from_env
    from cloud.identity.nats_users import NatsIdentities

    password = password_from_env(password_env)
    identities = NatsIdentities.load(store)
    try:
        secret = identities.provision_service(username, role, password)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    identities.save(store)
    _apply(store, auth, reload_pid)
    if password is None:
        typer.echo(json.dumps({"username": username, "password": secret}))
    else:
        console.print(f"[green]{username} ({role}) is in place[/]")


@app.command("render")
def render(store: Store = Path("nats-identities.json"), auth: Auth = None, reload_pid: Pids = None) -> None:
    """Write the include from the store again (e.g. for a new node), and reload."""
    _apply(store, auth, reload_pid)
    console.print("[green]include written[/]")
