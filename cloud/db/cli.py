"""`microfleet db ...`: migrate, status, maintain. Mounted by cloud/cli.py as the `db` sub-app."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from cloud.config import CloudConfig
from cloud.db.maintenance import run_once
from cloud.db.migrate import MigrationError, StoragePath, run_migrations
from cloud.db.pool import DatabaseUnreachable, connect, describe, ensure_database
from cloud.db.status import as_json, collect

app = typer.Typer(name="db", help="Database schema, partitions and rollups.", no_args_is_help=True)

DsnOption = Annotated[
    str | None,
    typer.Option(
        "--database-url", envvar="MICROFLEET_DATABASE_URL", help="PostgreSQL DSN (default: from config)."
    ),
]


def _dsn(value: str | None) -> str:
    return value or CloudConfig.from_env().database_url


def _fail(message: str) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


@app.command()
def migrate(
    database_url: DsnOption = None,
    path: Annotated[
        StoragePath | None,
        typer.Option(
            help="Storage path for a new database (default: timescale if the extension is available)."
        ),
    ] = None,
) -> None:
    """Create the database if needed and apply pending migrations (idempotent, safe to run concurrently)."""
    dsn = _dsn(database_url)
    try:
        if ensure_database(dsn):
            typer.echo(f"created database {describe(dsn)}")
        with connect(dsn, autocommit=True) as conn:
            result = run_migrations(conn, path=path)
    except (DatabaseUnreachable, MigrationError) as exc:
        raise _fail(str(exc)) from None
    for version in result.applied:
        typer.echo(f"applied {version}")
    typer.echo(
        f"{describe(dsn)}: {result.path} path, {len(result.applied)} migration(s) applied now, "
        f"{len(result.already)} already applied"
    )


@app.command()
def status(
    database_url: DsnOption = None,
    exact: Annotated[
        bool, typer.Option(help="Count rows of big tables exactly too (slow) instead of estimating them.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON document on stdout (and nothing else).")
    ] = False,
) -> None:
    """Applied migrations, storage path, partitions or chunks and row counts (small tables counted, big
    ones estimated by the planner and labelled so)."""
    dsn = _dsn(database_url)
    try:
        with connect(dsn, autocommit=True) as conn:
            st = collect(conn, exact=exact)
    except DatabaseUnreachable as exc:
        raise _fail(str(exc)) from None
    if st.path is None:
        raise _fail(f"{describe(dsn)} has no microfleet schema: run `microfleet db migrate`")
    if json_out:
        typer.echo(json.dumps(as_json(st) | {"database": describe(dsn)}))
        return
    typer.echo(f"{describe(dsn)}: {st.path} path")
    for version, at in st.migrations:
        typer.echo(f"  migration {version:<28} applied {at:%Y-%m-%d %H:%M:%S %Z}")
    fresh = "unknown" if st.usage_fresh_as_of is None else f"{st.usage_fresh_as_of:%Y-%m-%d %H:%M:%S %Z}"
    typer.echo(f"  usage rollups hold every sample stored before {fresh}")
    unit = "chunks" if st.path is StoragePath.TIMESCALE else "partitions"
    for r in st.relations:
        line = f"  {r.relation:<22} rows {r.rows:>14,} {'exact' if r.exact else '(estimate)'}"
        if r.parts is not None:
            line += f"  {unit} {r.parts}"
        if r.compressed is not None:
            line += f" ({r.compressed} compressed)"
        typer.echo(line)


@app.command()
def maintain(database_url: DsnOption = None) -> None:
    """Run partition maintenance and the pending rollups once (plain path; TimescaleDB runs its policies)."""
    dsn = _dsn(database_url)
    try:
        with connect(dsn, autocommit=True) as conn:
            report = run_once(conn, datetime.now(UTC))
    except DatabaseUnreachable as exc:
        raise _fail(str(exc)) from None
    except RuntimeError as exc:
        raise _fail(str(exc)) from None
    for c in report.changes:
        extra = "" if not c.rows else f" ({c.rows} rows)"
        typer.echo(f"{c.action} {c.partition}{extra}")
    typer.echo(
        f"{report.path} path: {len(report.changes)} partition change(s), rollups recomputed for "
        f"{report.rollups.hours} hour(s) and {report.rollups.days} day(s)"
    )
