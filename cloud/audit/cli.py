"""`microfleet audit list`: the safety audit trails for ops and compliance, newest first (`GET /audit`).

Mounted as `audit` by cloud/cli.py. Heavy imports stay inside the command so `--help` is fast."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from cloud.audit.queries import MAX_LIMIT, Kind

app = typer.Typer(
    no_args_is_help=True,
    help="Audit trails: safety-override changes, gate overrides, health-data reads.",
)

When = Annotated[str | None, typer.Option(help="ISO time (UTC if naive) or an age (30m, 6h, 2d).")]


def _when(text: str | None, now: datetime) -> datetime | None:
    from cloud.ingest.quarantine_cli import parse_since

    return None if text is None else parse_since(text, now)


@app.command("list")
def list_cmd(
    kind: Annotated[
        list[Kind] | None,
        typer.Option(
            "--kind",
            help="overrides (alert-override changes), gates (protocol pushes past a blocked safety gate), "
            "health-reads (reads of health data through the API); repeat for several. Default: all.",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="Only this device id.")] = None,
    by: Annotated[str | None, typer.Option("--by", help="Only what this person or token (name) did.")] = None,
    since: When = None,
    until: Annotated[str | None, typer.Option(help="Before this: ISO time or age.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT, help="At most this many, newest first.")] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON array on stdout (and nothing else), as GET /audit.")
    ] = False,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="Default: MICROFLEET_DATABASE_URL.")
    ] = None,
) -> None:
    """Audit rows, newest first: who changed a device's alert overrides (and which critical limits the
    change weakened), who pushed a protocol past a blocked safety gate and why, and which token read a
    device's health data by which route. The rows only: no health data is read to show them."""
    from rich.table import Table

    from cloud.audit.queries import Selection, list_entries, summary
    from cloud.config import CloudConfig
    from cloud.console import print_table
    from cloud.db.pool import DatabaseUnreachable, connect

    now = datetime.now(UTC)
    sel = Selection(tuple(kind or ()), device, by, _when(since, now), _when(until, now), limit)
    try:
        with connect(database_url or CloudConfig.from_env().database_url, autocommit=True) as conn:
            found = list_entries(conn, sel)
    except DatabaseUnreachable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps([e.as_json() for e in found]))
        return
    kinds = ", ".join(k.value for k in sel.kinds) or "all kinds"
    more = " (the limit: there may be more; --limit or --until)" if len(found) == limit else ""
    table = Table(title=f"audit ({kinds}): {len(found)} row(s), newest first{more}")
    for col in ("at (UTC)", "kind", "device", "by", "reason", "what"):
        table.add_column(col, overflow="fold")
    for e in found:  # a reason or name is shown as written (print_table: never read as rich markup)
        table.add_row(
            f"{e.at.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
            e.kind.value,
            e.device_id,
            e.by,
            e.reason or "-",
            summary(e),
        )
    print_table(table)
