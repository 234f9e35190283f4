"""`microfleet devices ...`, `microfleet broker bootstrap`, `microfleet pki init`, `microfleet keys generate`."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from cloud.config import CloudConfig
from cloud.console import print_table

if TYPE_CHECKING:
    from cloud.identity.dynsec import DynsecClient

devices_app = typer.Typer(
    no_args_is_help=True,
    help="Devices: list and filter them, tag them (fleet groups), and their broker identities.",
)
broker_app = typer.Typer(no_args_is_help=True, help="Broker security: roles and service identities.")
pki_app = typer.Typer(no_args_is_help=True, help="The project CA and the broker's TLS certificate.")
keys_app = typer.Typer(no_args_is_help=True, help="Ed25519 signing keys for protocols and firmware.")
console = Console(stderr=True)


def password_from_env(name: str | None) -> str | None:
    """The password in environment variable `name` (a `--password-env` option), None without the option;
    exit 2 when the variable is unset or empty (a service must not get a generated password by mistake)."""
    if not name:
        return None
    password = os.environ.get(name)
    if not password:
        console.print(f"[red]{name} is not set[/]")
        raise typer.Exit(2)
    return password


# An ops command waits this long for the broker's answer: one-shot jobs (compose's broker-setup, a
# provisioning step) run while a stack is still starting, and the first name lookup inside a fresh
# container network was seen to take ~40 s under Podman (a 10 s wait failed `devices provision`).
ADMIN_CONNECT_S = 60.0


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
    return config, DynsecClient(config.broker_admin_url, a.username, a.password, ADMIN_CONNECT_S)


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

    password = password_from_env(password_env)
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


@devices_app.command("identities")
def list_identities(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON array on stdout (and nothing else).")
    ] = False,
) -> None:
    """Identities known to the broker (devices and services)."""
    _config, admin = _admin()
    with admin:
        names = list(admin.list_clients())
    if as_json:
        typer.echo(json.dumps(names))
        return
    for name in names:
        typer.echo(name)


def _since(text: str | None) -> datetime | None:
    from cloud.ingest.quarantine_cli import parse_since

    return None if text is None else parse_since(text, datetime.now(UTC))


def _database() -> Any:
    from cloud.db.pool import DatabaseUnreachable, connect

    try:
        return connect(CloudConfig.from_env().database_url, autocommit=True)
    except DatabaseUnreachable as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None


@devices_app.command("list")
def list_devices(
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Has this tag (repeat: all of them).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="This model.")] = None,
    fw: Annotated[str | None, typer.Option("--fw", help="Running this firmware version.")] = None,
    protocol: Annotated[str | None, typer.Option(help="Running this protocol id.")] = None,
    protocol_version: Annotated[int | None, typer.Option(help="... at this version.")] = None,
    state: Annotated[str | None, typer.Option(help="online or offline.")] = None,
    seen_since: Annotated[
        str | None, typer.Option(help="Last seen since: ISO time or age (30m, 6h, 2d).")
    ] = None,
    seen_before: Annotated[
        str | None, typer.Option(help="Last seen before: ISO time or age (devices never seen left out).")
    ] = None,
    battery_below: Annotated[
        float | None, typer.Option(min=0, max=100, help="Battery percent below.")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=100000, help="At most this many, in device id order.")
    ] = 1000,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON array on stdout (and nothing else).")
    ] = False,
) -> None:
    """Devices in the database, filtered (every filter given must hold); `GET /devices` takes the same."""
    from psycopg.rows import dict_row

    from cloud.identity.fleet import FILTERS, DeviceFilter, TagError, check_tag

    try:
        tags = tuple(check_tag(t) for t in tag or ())
    except TagError as exc:
        raise typer.BadParameter(str(exc)) from None
    wanted = DeviceFilter(
        model,
        fw,
        state,
        tags,
        protocol,
        protocol_version,
        _since(seen_since),
        _since(seen_before),
        battery_below,
    )
    query = (
        "select d.device_id, d.model, d.hw_rev, d.fw_version, d.protocol_id, d.protocol_version, d.state, "
        "d.last_seen, d.battery_pct, d.tags from devices d "
        f"where {FILTERS} order by d.device_id limit %(limit)s"
    )
    with _database() as conn:
        rows = conn.cursor(row_factory=dict_row).execute(query.encode(), wanted.params(limit)).fetchall()
    if as_json:
        typer.echo(json.dumps(rows, default=str))
        return
    from rich.table import Table

    table = Table(title=f"{len(rows)} device(s)")
    for col in ("device", "model", "hw", "firmware", "protocol", "state", "last seen", "battery", "tags"):
        table.add_column(col, overflow="fold")
    for r in rows:
        proto = f"{r['protocol_id']} v{r['protocol_version']}" if r["protocol_id"] else "-"
        seen = f"{r['last_seen']:%Y-%m-%d %H:%M}" if r["last_seen"] else "never"
        battery = "-" if r["battery_pct"] is None else f"{r['battery_pct']:.0f}%"
        table.add_row(
            r["device_id"], r["model"] or "-", r["hw_rev"] or "-", r["fw_version"] or "-", proto,
            r["state"] or "-", seen, battery, ",".join(r["tags"]),
        )  # fmt: skip
    print_table(table)


@devices_app.command("tag")
def tag_device(
    device_id: str,
    add: Annotated[list[str] | None, typer.Option("--add", help="Add this tag (repeatable).")] = None,
    remove: Annotated[
        list[str] | None, typer.Option("--remove", help="Remove this tag (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The device's tags as one JSON object.")] = False,
) -> None:
    """Add or remove a device's tags (its fleet groups: `ota rollout create --tag`, `protocol publish
    --to-tag` and `devices list --tag` select by them). Prints the tags it has then."""
    from cloud.identity.fleet import ADD_TAGS, GET_TAGS, REMOVE_TAGS, TagError, check_tag

    try:
        plus = [check_tag(t) for t in add or ()]
        minus = [check_tag(t) for t in remove or ()]
    except TagError as exc:
        raise typer.BadParameter(str(exc)) from None
    with _database() as conn, conn.transaction():
        row = conn.execute(GET_TAGS, (device_id,)).fetchone()
        if plus:
            row = conn.execute(ADD_TAGS, (plus, device_id)).fetchone()
        if minus:
            row = conn.execute(REMOVE_TAGS, (minus, device_id)).fetchone()
    if row is None:
        console.print(f"[red]no device {device_id!r}: it appears when it connects or is registered[/]")
        raise typer.Exit(1)
    tags = sorted(row[0])
    if as_json:
        typer.echo(json.dumps({"device_id": device_id, "tags": tags}))
    else:
        typer.echo(f"{device_id}: {', '.join(tags) or 'no tags'}")


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
