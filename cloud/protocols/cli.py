"""`microfleet protocol ...`: validate, publish, list, show, status.

Exit codes: 0 done (devices skipped by policy, their safety gate blocked, are not an error: one SKIPPED
line each); 1 an operational error (database, broker unreachable, a message the broker refused, signing
key, no matching device, every target blocked by its safety gate: nothing sent); 2 the document is
refused: not a valid protocol, or over a model's hard limits (each field and limit is printed). The
database and broker come from MICROFLEET_DATABASE_URL / MICROFLEET_MQTT_URL.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path
from typing import Any

import msgspec
import typer
from rich.console import Console

from cloud.config import CloudConfig
from cloud.protocols.publish import (
    DEFAULT_RATE_PER_S,
    SIGNING_KEY_ENV,
    InvalidProtocol,
    PublishError,
    Refused,
    Targets,
    parse_protocol,
    validate,
)

app = typer.Typer(no_args_is_help=True, help="Treatment protocols: validate, publish, show, status.")
console = Console(stderr=True, soft_wrap=True)
EXIT_ERROR = 1
EXIT_REFUSED = 2


def _read(file: Path) -> Any:
    try:
        return parse_protocol(file.read_bytes())
    except OSError as exc:
        console.print(f"[red]{file}: {exc}[/]")
        raise typer.Exit(EXIT_ERROR) from None
    except InvalidProtocol as exc:
        console.print(f"[red]{file}: {exc}[/]")
        raise typer.Exit(EXIT_REFUSED) from None


def _print_refusal(by_model: dict[str, Any]) -> None:
    for model, violations in sorted(by_model.items()):
        for v in violations:
            typer.echo(f"REFUSED {model}: {v.field}={v.value}: {v.message} (limit {v.limit})", err=True)


async def _connect(config: CloudConfig) -> Any:
    import psycopg

    try:
        return await psycopg.AsyncConnection.connect(config.database_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        console.print(f"[red]database unreachable ({exc}); check MICROFLEET_DATABASE_URL[/]")
        raise typer.Exit(EXIT_ERROR) from None


@app.command("validate")
def validate_cmd(
    file: Path,
    model: list[str] = typer.Option(
        None, "--model", help="check for this model (default: the models listed)"
    ),
) -> None:
    """Check a protocol file against the hard limits of each model, without publishing anything."""
    protocol = _read(file)
    models = tuple(model) if model else protocol.models
    problems = validate(protocol, models)
    if problems:
        _print_refusal(problems)
        raise typer.Exit(EXIT_REFUSED)
    typer.echo(f"{protocol.protocol_id} v{protocol.version}: OK for {', '.join(models)}")


@app.command("publish")
def publish_cmd(
    file: Path,
    to_model: list[str] = typer.Option([], "--to-model", help="every device of this model (repeatable)"),
    to_tag: list[str] = typer.Option([], "--to-tag", help="every device with this tag (repeatable)"),
    device: list[str] = typer.Option([], "--device", help="this device (repeatable)"),
    key: Path | None = typer.Option(None, "--key", help=f"signing key PEM (default: ${SIGNING_KEY_ENV})"),
    rate: float = typer.Option(DEFAULT_RATE_PER_S, help="messages per second to the broker"),
    by: str = typer.Option("", help="who publishes (default: the login name)"),
    override_safety_gate: str = typer.Option(
        "",
        "--override-safety-gate",
        metavar="REASON",
        help="also send to devices whose safety gate is blocked (an open blocking contraindication), "
        "e.g. after a physician's approval; the reason is recorded per device. Default: they are skipped",
    ),
) -> None:
    """Validate, sign, store and send a protocol as retained desired state to the targeted devices.

    Devices whose safety gate is blocked are skipped by policy and listed (SKIPPED lines): not an error.
    Exit 0: sent to every other target; 1: the broker refused a message or could not be reached, or
    every target is blocked (nothing sent); 2: the document is invalid or over a model's limits."""
    from cloud.protocols.publish import load_signing_key, publish

    protocol = _read(file)
    config = CloudConfig.from_env()

    async def run() -> None:
        targets = Targets(tuple(to_model), tuple(to_tag), tuple(device))
        signing_key = load_signing_key(key)
        conn = await _connect(config)
        async with conn:
            result = await publish(
                conn,
                protocol,
                targets,
                signing_key,
                config.mqtt_url,
                by=by or getpass.getuser(),
                rate_per_s=rate,
                on_progress=lambda n, total: console.print(f"sent {n}/{total}"),
                override_gate=override_safety_gate,
            )
        typer.echo(
            f"{result.protocol_id} v{result.version} published to {result.devices} devices "
            f"({result.sent} acknowledged, {result.refused} refused by the broker) in {result.seconds:.1f}s"
            + ("" if result.new_version else " (version already stored: re-sent)")
        )
        for device_id in result.skipped_blocked:
            typer.echo(f"SKIPPED {device_id}: safety gate blocked (an open blocking contraindication)")
        for device_id in result.gate_overridden:
            typer.echo(f"OVERRIDDEN {device_id}: safety gate blocked, sent anyway (reason recorded)")
        if result.refused:  # skipping by policy is reported above and is not an error; a refusal is
            raise typer.Exit(EXIT_ERROR)

    try:
        asyncio.run(run())
    except Refused as exc:
        _print_refusal(exc.by_model)
        raise typer.Exit(EXIT_REFUSED) from None
    except (PublishError, ValueError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_ERROR) from None


@app.command("list")
def list_cmd(
    protocol_id: str | None = typer.Argument(None),
    as_json: bool = typer.Option(False, "--json", help="One JSON array on stdout (and nothing else)."),
) -> None:
    """Published versions, newest first, with how many devices want each."""
    from cloud.protocols import store

    async def run() -> None:
        async with await _connect(CloudConfig.from_env()) as conn:
            versions = await store.list_versions(conn, protocol_id)
        if as_json:
            typer.echo(json.dumps([msgspec.to_builtins(v) for v in versions], default=str))
            return
        for s in versions:
            typer.echo(
                f"{s.protocol_id} v{s.version}  {s.published_at:%Y-%m-%d %H:%M}Z  by {s.published_by or '-'}  "
                f"key {s.key_id}  assigned {s.assigned}"
            )

    asyncio.run(run())


@app.command("show")
def show(
    protocol_id: str,
    version: int | None = typer.Option(None, help="default: the latest"),
    as_json: bool = typer.Option(
        False, "--json", help="Compact: one line of JSON (the output is one JSON document either way)."
    ),
) -> None:
    """The stored protocol document (JSON) with who published it and the signing key."""
    from cloud.protocols import store

    async def run() -> None:
        async with await _connect(CloudConfig.from_env()) as conn:
            found = await store.get(conn, protocol_id, version)
        if found is None:
            console.print(f"[red]no protocol {protocol_id}{f' v{version}' if version else ''}[/]")
            raise typer.Exit(EXIT_ERROR)
        out = {
            "protocol": msgspec.to_builtins(found.protocol),
            "key_id": found.key_id,
            "published_at": found.published_at.isoformat(),
            "published_by": found.published_by,
        }
        typer.echo(json.dumps(out) if as_json else json.dumps(out, indent=2))

    asyncio.run(run())


@app.command("status")
def status(
    protocol_id: str,
    version: int | None = typer.Option(None, help="default: the latest"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout (and nothing else)."),
) -> None:
    """Desired vs reported: converged, rejected and pending devices for a protocol version."""
    from cloud.protocols import store
    from cloud.protocols.progress import progress

    async def run() -> None:
        async with await _connect(CloudConfig.from_env()) as conn:
            found = await store.get(conn, protocol_id, version)
            if found is None:
                console.print(f"[red]no protocol {protocol_id}{f' v{version}' if version else ''}[/]")
                raise typer.Exit(EXIT_ERROR)
            p = await progress(conn, protocol_id, found.protocol.version)
        if as_json:
            typer.echo(json.dumps(msgspec.to_builtins(p) | {"done": p.done}))
            return
        typer.echo(
            f"{p.protocol_id} v{p.version}: {p.targeted} targeted, {p.converged} converged, "
            f"{p.rejected} rejected, {p.pending} pending ({p.offline} offline)"
        )
        for device_id, reason in p.rejections:
            typer.echo(f"  rejected by {device_id}: {reason}")

    asyncio.run(run())
