"""`microfleet quarantine list|replay`: see what ingest could not store, and replay it after a fix."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Quarantined uplinks: list them, replay them after a fix.")

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime) -> datetime:
    """An ISO date/time (UTC if naive) or an age such as 30m, 6h, 2d."""
    m = _AGO.match(text.strip())
    if m:
        return now - timedelta(**{_UNITS[m[2]]: float(m[1])})
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: use an ISO time (2026-03-01T12:00) or an age (30m, 6h, 2d)"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _dsn(database_url: str | None) -> str:
    if database_url:
        return database_url
    from cloud.config import CloudConfig

    return CloudConfig.from_env(os.environ).database_url


Reason_ = Annotated[str | None, typer.Option("--reason", help="Only this reason (schema, too_late, ...).")]
Device = Annotated[str | None, typer.Option("--device", help="Only this device id.")]
Url = Annotated[str | None, typer.Option("--database-url", help="Default: MICROFLEET_DATABASE_URL.")]


@app.command("list")
def list_cmd(
    reason: Reason_ = None,
    device: Device = None,
    since: Annotated[str | None, typer.Option(help="Received since: ISO time or age (6h, 2d).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows, newest first.")] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON array on stdout (and nothing else).")
    ] = False,
    database_url: Url = None,
) -> None:
    """List quarantined messages, newest first, with why they were refused and any replay result."""
    import psycopg
    from rich.table import Table

    from cloud.console import print_table
    from cloud.ingest.quarantine import Selection, count, list_rows

    sel = Selection(reason, device, None if since is None else parse_since(since, datetime.now(UTC)))
    with psycopg.connect(_dsn(database_url)) as conn:
        found = list_rows(conn, sel, limit=limit)
        total = count(conn, sel)
    if as_json:
        typer.echo(json.dumps([r.as_json() for r in found]))
        return
    table = Table(title=f"quarantine: {len(found)} of {total} matching rows")
    for col in ("id", "received", "reason", "device", "kind", "bytes", "detail", "replay"):
        table.add_column(col, overflow="fold")
    for r in found:
        parts = r.topic.split("/")
        device_id, kind = (parts[2], parts[4]) if len(parts) == 5 else ("?", r.topic)
        replay = "" if r.replay_result is None else f"{r.replay_result} {r.replayed_at:%Y-%m-%d %H:%M}"
        table.add_row(
            str(r.id), f"{r.received_at:%Y-%m-%d %H:%M:%S}", r.reason, device_id, kind, str(r.size),
            r.detail[:160], replay,
        )  # fmt: skip
    print_table(table)


@app.command("replay")
def replay_cmd(
    reason: Reason_ = None,
    device: Device = None,
    ids: Annotated[list[int] | None, typer.Option("--id", help="Only these row ids (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decode and report; write nothing.")] = False,
    late_horizon_days: Annotated[
        float | None,
        typer.Option(help="Accept data this old (default: the database's late horizon); for old data."),
    ] = None,
    database_url: Url = None,
) -> None:
    """Decode quarantined messages again with today's code and store what now decodes (idempotent).

    Rows already stored are skipped; each replayed row records replayed_at and its result. Exits 1 if some
    selected rows still fail (listed with their reason)."""
    import psycopg
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cloud.ingest.quarantine import Selection, count, replay
    from cloud.ingest.service import late_horizon_of

    dsn = _dsn(database_url)
    sel = Selection(reason, device, None, tuple(ids or ()))
    horizon = timedelta(days=late_horizon_days) if late_horizon_days is not None else late_horizon_of(dsn)
    with psycopg.connect(dsn) as conn:
        total = count(conn, sel, pending_only=True)
    console = Console()
    with Progress(
        TextColumn("replaying" + (" (dry run)" if dry_run else "")),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("replay", total=total)
        report = replay(
            dsn, sel, late_horizon=horizon, dry_run=dry_run, progress=lambda n: bar.advance(task, n)
        )
    verb = "would be stored" if dry_run else "stored"
    console.print(
        f"{report.selected} selected (late horizon {horizon}): {report.stored} {verb}, "
        f"{report.skipped} skipped (sync requests), {sum(report.still.values())} still fail"
    )
    for why, n in sorted(report.still.items()):
        console.print(f"  {why}: {n}")
    for row_id, why, detail in report.examples:
        console.print(f"  id {row_id}: {why}: {detail[:200]}", markup=False, highlight=False)
    if report.still:
        raise typer.Exit(1)
