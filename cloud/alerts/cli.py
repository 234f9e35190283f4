"""`microfleet alerts`: run the engine, and list / ack / resolve / snooze alerts (every change audited).

The lead mounts this app as `alerts` (cloud/cli.py: `app.add_typer(alerts_app, name="alerts")`).
Heavy imports stay inside the commands so `--help` is fast.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from cloud.runtime import service_cli
from cloud.runtime.service_cli import MetricsPort

app = typer.Typer(no_args_is_help=True, help="Alerts: the engine, and the operators' alert commands.")


def _cfg(**overrides: object) -> Any:
    from cloud.alerts.config import AlertConfig, AlertConfigError
    from cloud.config import CloudConfig

    try:
        return AlertConfig.from_env(
            CloudConfig.from_env(), None, **{k: v for k, v in overrides.items() if v is not None}
        )
    except AlertConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def run(
    consumer_id: Annotated[
        str | None,
        typer.Option(
            help="Stable id of this engine (its broker session). Default MICROFLEET_ALERT_CONSUMER_ID."
        ),
    ] = None,
    gate: Annotated[bool, typer.Option(help="Poll device profiles for the safety gate (C1).")] = True,
    metrics_port: MetricsPort = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run one alert engine in the `alerts` shared-subscription group until SIGTERM/SIGINT (with
    MICROFLEET_NATS_URL: on the `alerts` JetStream durable of the NATS tier, see `microfleet nats setup`).

    Logs: MICROFLEET_LOG_LEVEL, MICROFLEET_LOG_FORMAT=json for one JSON object per line."""
    from cloud.alerts.service import AlertService

    cloud = service_cli.configure(verbose)
    service = AlertService(
        _cfg(consumer_id=consumer_id),
        gate=gate,
        metrics_port=metrics_port if metrics_port is not None else cloud.metrics_port,
        metrics_host=cloud.metrics_host,
    )
    service_cli.run(service.run)


@app.command("list")
def list_(
    state: Annotated[
        str | None, typer.Option(help="open, acknowledged, snoozed, resolved, or live (not resolved).")
    ] = "live",
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON array of alerts on stdout (and nothing else).")
    ] = False,
) -> None:
    """List alerts, newest first."""
    from cloud.alerts.queries import list_alerts
    from cloud.db.pool import connect

    with connect(_cfg().database_url) as conn:
        rows = list_alerts(conn, state=state, device_id=device, limit=limit)
    if as_json:
        typer.echo(json.dumps(rows, default=str))
        return
    for r in rows:
        typer.echo(
            f"{r['id']:>6} {r['state']:<12} {r['severity']:<8} {r['rule_id']:<3} {r['device_id']} "
            f"[{r['episode_key']}] x{r['count']} last {r['last_seen']:%Y-%m-%d %H:%M} {r['message']}"
        )
    if not rows:
        typer.echo("no alerts match", err=True)


def _act(alert_id: int, op: str, by: str, reason: str, until: datetime | None = None) -> None:
    from cloud.alerts.lifecycle import Action, LifecycleError, Op
    from cloud.alerts.queries import act
    from cloud.db.pool import connect

    cfg = _cfg()
    try:
        with connect(cfg.database_url) as conn:
            row = act(conn, cfg, alert_id, Action(Op(op), by, reason, until), datetime.now(UTC))
    except LifecycleError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"alert {row['id']} is {row['state']}")


By = Annotated[str, typer.Option("--by", help="Who you are (recorded in the audit trail).")]
Reason = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit trail).")]


@app.command()
def ack(alert_id: int, by: By, reason: Reason = "acknowledged") -> None:
    """Acknowledge an alert: ops are on it."""
    _act(alert_id, "ack", by, reason)


@app.command()
def resolve(alert_id: int, by: By, reason: Reason = "resolved by an operator") -> None:
    """Resolve an alert by hand."""
    _act(alert_id, "resolve", by, reason)


@app.command()
def snooze(
    alert_id: int,
    until: Annotated[datetime, typer.Option(help="ISO time with zone, e.g. 2024-05-06T09:00:00+00:00.")],
    by: By,
    reason: Reason = "snoozed",
) -> None:
    """Snooze an alert until a time; it reopens then."""
    if until.tzinfo is None:
        typer.echo("error: --until needs a time zone, e.g. 2024-05-06T09:00:00+00:00", err=True)
        raise typer.Exit(2)
    _act(alert_id, "snooze", by, reason, until)


def _device_params(conn: Any, device: str) -> Any:
    from cloud.alerts.overrides import GET, describe

    row = conn.execute(GET, (device,)).fetchone()
    if row is None:
        typer.echo(f"error: no device {device!r} (it must have connected or been registered)", err=True)
        raise typer.Exit(1)
    return row, describe(row)


@app.command()
def params(
    device: Annotated[str, typer.Argument(help="Device id.")],
    as_json: Annotated[bool, typer.Option("--json", help="The whole parameter set as JSON.")] = False,
) -> None:
    """The rule parameters the engine uses for a device: its model, the protocol it runs, its overrides."""
    from cloud.db.pool import connect

    with connect(_cfg().database_url) as conn:
        _row, d = _device_params(conn, device)
    if as_json:
        typer.echo(json.dumps(d.to_dict(), indent=2, default=str))
        return
    typer.echo(f"{d.device_id}: model {d.model or '?'}, protocol {d.protocol or 'none reported'}")
    typer.echo(f"overrides: {json.dumps(d.overrides) if d.overrides else 'none'}")
    if d.overrides:
        typer.echo(f"  set by {d.updated_by} at {d.updated_at}: {d.reason}")
    for section, fields in d.to_dict()["params"].items():
        typer.echo(f"  {section}: {json.dumps(fields)}")


@app.command()
def override(
    device: Annotated[str, typer.Argument(help="Device id.")],
    by: By,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="section.parameter=value, e.g. o2.warn_daily_s=900 (repeat for more)."),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every override of the device.")] = False,
    reason: Reason = "",
    confirm: Annotated[
        bool,
        typer.Option(
            "--confirm-weaken-critical",
            help="Needed (with --reason) to disable or loosen a safety-critical rule: O1, T6, T7, C1.",
        ),
    ] = False,
) -> None:
    """Override rule parameters for one device (merged into its current overrides), or clear them.

    Overrides stay within the model's hard limits (hw.max_ua, auto-off, ...) and keep warnings under
    their alert levels; weakening a safety-critical rule needs --confirm-weaken-critical and --reason.
    Every change is recorded in the audit trail (alert_override_changes)."""
    from cloud.alerts.overrides import AUDIT, DELETE, UPSERT, OverrideError, audit_row, merge, review
    from cloud.db.pool import connect

    if clear == bool(set_):
        typer.echo("error: give --set section.parameter=value (one or more) or --clear", err=True)
        raise typer.Exit(2)
    now = datetime.now(UTC)
    with connect(_cfg().database_url) as conn, conn.transaction():
        row, current = _device_params(conn, device)
        if clear:
            conn.execute(DELETE, (device,))
            conn.execute(AUDIT, audit_row(device, now, by, reason, current.overrides, {}, None))
            typer.echo(f"{device}: overrides cleared")
            return
        try:
            wanted = merge(current.overrides, set_ or [])
            checked = review(row, current.overrides, wanted, confirm, reason)
        except OverrideError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        conn.execute(UPSERT, (device, json.dumps(wanted), reason, now, by))
        conn.execute(AUDIT, audit_row(device, now, by, reason, current.overrides, wanted, checked))
    for w in checked.weakened:
        typer.echo(f"WEAKENED {w} (confirmed by {by}: {reason})", err=True)
    typer.echo(f"{device}: overrides now {json.dumps(wanted)}")
