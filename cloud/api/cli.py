"""`microfleet api ...`: serve the HTTP API, and manage API tokens (mint the first admin token here)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cloud.api.models import Role
from cloud.config import CloudConfig

app = typer.Typer(name="api", help="The HTTP API: serve it, manage its tokens.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens (stored hashed; a token is shown once).", no_args_is_help=True)
app.add_typer(token_app, name="token")

DsnOption = Annotated[
    str | None,
    typer.Option(
        "--database-url", envvar="MICROFLEET_DATABASE_URL", help="PostgreSQL DSN (default: from config)."
    ),
]


def _config(database_url: str | None) -> CloudConfig:
    config = CloudConfig.from_env()
    return CloudConfig.from_env(database_url=database_url) if database_url else config


def _fail(message: str) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    database_url: DsnOption = None,
    log_level: Annotated[
        str | None, typer.Option(help="Log level (default MICROFLEET_LOG_LEVEL, else info).")
    ] = None,
) -> None:
    """Serve the API (OpenAPI document at /openapi.json, interactive docs at /docs; /healthz, /readyz and
    Prometheus /metrics on the same port). Logs: MICROFLEET_LOG_FORMAT=json for one JSON object per line
    (uvicorn's access and error logs included)."""
    import os

    import uvicorn

    from cloud.api.app import create_app
    from cloud.runtime import logs

    env = dict(os.environ)
    if log_level:
        env["MICROFLEET_LOG_LEVEL"] = log_level
    try:
        logs.setup(env=env)
    except ValueError as exc:
        raise _fail(f"error: {exc}") from None
    # log_config=None: uvicorn's loggers go through the root handler set up above (text or JSON)
    uvicorn.run(
        create_app(_config(database_url)),
        host=host,
        port=port,
        log_config=None,
        log_level=logs.settings(env=env)[0],
    )


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="Who or what uses the token, e.g. alice or grafana.")],
    role: Annotated[
        Role, typer.Option(help="viewer reads; operator acts on alerts/rollouts; admin manages.")
    ],
    database_url: DsnOption = None,
    health_data: Annotated[
        bool,
        typer.Option(
            "--health-data",
            help="Also grant reading devices' health data (contraindications, notes); no role implies it. "
            "Every read is audited in health_data_reads.",
        ),
    ] = False,
) -> None:
    """Create a token and print it once on stdout (only its SHA-256 is stored)."""
    import psycopg

    from cloud.api import tokens
    from cloud.db.pool import DatabaseUnreachable, connect

    try:
        with connect(_config(database_url).database_url) as conn:
            token, token_id = tokens.create_sync(conn, name, role, health_data)
    except DatabaseUnreachable as exc:
        raise _fail(str(exc)) from None
    except psycopg.errors.UndefinedTable:
        raise _fail("the api_tokens table is missing: run `microfleet db migrate` first") from None
    grant = ", health data" if health_data else ""
    typer.secho(f"token {token_id} ({name}, {role.value}{grant}); it is shown once, keep it safe:", err=True)
    typer.echo(token)


@token_app.command("list")
def token_list(
    database_url: DsnOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON array on stdout (and nothing else).")
    ] = False,
) -> None:
    """Every token: id, name, role, created, revoked, and `health-data` if it holds the grant to read
    devices' health data (never the token itself)."""
    from cloud.api import tokens
    from cloud.db.pool import DatabaseUnreachable, connect

    try:
        with connect(_config(database_url).database_url) as conn:
            rows = conn.execute(tokens.LIST_FULL).fetchall()
    except DatabaseUnreachable as exc:
        raise _fail(str(exc)) from None
    if as_json:
        keys = ("token_id", "name", "role", "health_data", "created_at", "revoked_at")
        typer.echo(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], default=str))
        return
    for token_id, name, role, health_data, created_at, revoked_at in rows:
        revoked = f"revoked {revoked_at.isoformat()}" if revoked_at else "active"
        grant = "\thealth-data" if health_data else ""
        typer.echo(f"{token_id}\t{name}\t{role}\t{created_at.isoformat()}\t{revoked}{grant}")


@token_app.command("revoke")
def token_revoke(token_id: int, database_url: DsnOption = None) -> None:
    """Revoke a token: it is refused from the next request on."""
    from cloud.api import tokens
    from cloud.db.pool import DatabaseUnreachable, connect

    try:
        with connect(_config(database_url).database_url) as conn:
            row = conn.execute(tokens.REVOKE, (token_id,)).fetchone()
            conn.commit()
    except DatabaseUnreachable as exc:
        raise _fail(str(exc)) from None
    if row is None:
        raise _fail(f"no token {token_id}; see `microfleet api token list`")
    typer.echo(f"token {token_id} revoked")
