"""`microfleet ota ...`: releases, rollouts and their progress (counts per state per wave).

Environment: MICROFLEET_DATABASE_URL, MICROFLEET_ARTIFACT_DIR (artifact store),
MICROFLEET_SIGNING_KEY_FILE (Ed25519 PEM from `microfleet keys generate`), MICROFLEET_OTA_TRUSTED_KEYS (the
JSON list of TrustedKey devices trust; a rollout is refused unless its manifest verifies with it).
`microfleet ota serve` runs the OTA service (MQTT + rollouts); artifacts are served by the API app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer

from cloud.runtime import service_cli
from cloud.runtime.service_cli import MetricsPort

app = typer.Typer(no_args_is_help=True, help="Firmware over the air: releases, staged rollouts, progress.")
release_app = typer.Typer(no_args_is_help=True, help="Firmware releases (artifact + signed manifest).")
rollout_app = typer.Typer(no_args_is_help=True, help="Staged rollouts: create, list.")
app.add_typer(release_app, name="release")
app.add_typer(rollout_app, name="rollout")
T = TypeVar("T")
Json = Annotated[bool, typer.Option("--json", help="One JSON document on stdout (and nothing else).")]


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise typer.BadParameter(f"set {name} (see `microfleet ota --help`)")
    return value


def _trust() -> Any:
    from contract.signing import TrustedKey, TrustStore

    raw = Path(_env("MICROFLEET_OTA_TRUSTED_KEYS")).read_bytes()
    try:
        keys = msgspec.json.decode(raw, type=list[TrustedKey])
    except msgspec.ValidationError:
        keys = [msgspec.json.decode(raw, type=TrustedKey)]
    return TrustStore(keys)


def _run(work: Callable[[Any], Awaitable[T]]) -> T:
    from psycopg import AsyncConnection

    from cloud.config import CloudConfig
    from cloud.ota.artifacts import ReleaseRefused

    async def main() -> T:
        async with await AsyncConnection.connect(
            CloudConfig.from_env().database_url, autocommit=True
        ) as conn:
            return await work(conn)

    try:
        return asyncio.run(main())
    except ReleaseRefused as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(2) from None


def _plan(
    percents: str, canaries: str, success: float, errors: float, min_sample: int, soak: float, in_flight: int
) -> Any:
    from cloud.ota.rollout import RolloutPlan

    try:
        return RolloutPlan(
            canaries=_csv(canaries),
            percents=tuple(float(p) for p in _csv(percents)),
            success_ratio=success,
            error_ratio=errors,
            min_sample=min_sample,
            soak_s=soak,
            max_in_flight=in_flight,
        )
    except (ValueError, msgspec.ValidationError) as exc:
        raise typer.BadParameter(str(exc)) from None


@release_app.command("add")
def release_add(
    file: Path,
    version: Annotated[str, typer.Option()],
    code: Annotated[
        int, typer.Option(help="Anti-rollback number: devices refuse a lower one than they ran.")
    ],
    models: Annotated[str, typer.Option(help="Comma-separated device models.")],
    hw_revs: Annotated[str, typer.Option(help="Comma-separated hardware revisions (empty: all).")] = "",
    min_battery: Annotated[float, typer.Option()] = 30.0,
    sha256: Annotated[str | None, typer.Option(help="Refuse the file unless it has this SHA-256.")] = None,
) -> None:
    """Store FILE in the artifact store, sign its manifest and record the release."""
    from cloud.ota.artifacts import add_release, artifact_dir
    from contract.signing import SigningKey

    key = SigningKey.from_pem(Path(_env("MICROFLEET_SIGNING_KEY_FILE")).read_bytes())
    rel = _run(
        lambda conn: add_release(
            conn,
            artifact_dir(),
            file,
            version=version,
            version_code=code,
            models=_csv(models),
            hw_revs=_csv(hw_revs),
            min_battery_pct=min_battery,
            key=key,
            now=datetime.now(UTC),
            expected_sha256=sha256,
        )
    )
    typer.echo(
        f"release {rel.version} (id {rel.release_id}) sha256 {rel.manifest.sha256} signed by {key.key_id}"
    )


@release_app.command("list")
def release_list(as_json: Json = False) -> None:
    """Every release, oldest version code first: version, code, models, size, SHA-256."""
    from cloud.ota import listing

    rows = _run(listing.releases)
    if as_json:
        typer.echo(_dumps(rows))
        return
    from rich.table import Table

    from cloud.console import print_table

    table = Table(title=f"{len(rows)} firmware release(s)")
    for col in ("id", "version", "code", "models", "hw revs", "min battery", "size", "sha256"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["release_id"]), r["version"], str(r["version_code"]), ",".join(r["models"]),
            ",".join(r.get("hw_revs") or []) or "all", f"{r['min_battery_pct']:g}%", f"{r['size']:,}",
            r["sha256"][:16],
        )  # fmt: skip
    print_table(table)


@rollout_app.command("list")
def rollout_list(
    status: Annotated[
        str | None, typer.Option(help="Only this status: running, paused, cancelling, cancelled, completed.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="At most this many, newest first.")] = 50,
    as_json: Json = False,
) -> None:
    """Rollouts, newest first: release, status, wave and device counts."""
    from cloud.ota import listing

    if status is not None and status not in listing.ROLLOUT_STATUSES:
        raise typer.BadParameter(f"{status!r}: one of {', '.join(listing.ROLLOUT_STATUSES)}")
    rows = _run(lambda c: listing.rollouts(c, status, limit))
    if as_json:
        typer.echo(_dumps(rows))
        return
    from rich.table import Table

    from cloud.console import print_table

    table = Table(title=f"{len(rows)} rollout(s)")
    for col in ("id", "version", "status", "wave", "devices", "succeeded", "failed", "pending", "created"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["rollout_id"]), r["version"], r["status"], str(r["wave"]), str(r["devices"]),
            str(r["succeeded"]), str(r["failed"]), str(r["pending"]), f"{r['created_at']:%Y-%m-%d %H:%M}",
        )  # fmt: skip
    print_table(table)


@rollout_app.command("create")
def rollout_create(
    version: str,
    models: Annotated[str, typer.Option()] = "",
    hw_rev: Annotated[str, typer.Option()] = "",
    fw: Annotated[str, typer.Option(help="Only devices running these versions.")] = "",
    tag: Annotated[str, typer.Option(help="Only devices with any of these tags.")] = "",
    canaries: Annotated[str, typer.Option(help="Device ids for a first wave.")] = "",
    waves: Annotated[str, typer.Option(help="Cumulative percentages.")] = "1,10,50,100",
    success: Annotated[float, typer.Option(help="Share of a wave that must succeed to advance.")] = 0.95,
    errors: Annotated[float, typer.Option(help="Failure share that pauses the rollout.")] = 0.02,
    min_sample: Annotated[int, typer.Option()] = 20,
    soak: Annotated[float, typer.Option(help="Seconds to wait after a wave passed.")] = 3600.0,
    in_flight: Annotated[int, typer.Option(help="Most jobs out at once (pacing).")] = 1000,
) -> None:
    from cloud.ota import store
    from cloud.ota.artifacts import artifact_dir

    plan = _plan(waves, canaries, success, errors, min_sample, soak, in_flight)
    targets = store.Targets(_csv(models), _csv(hw_rev), _csv(fw), _csv(tag))
    trust = _trust()
    rid = _run(
        lambda c: store.create_rollout(
            c, version, targets, plan, store=artifact_dir(), trust=trust, now=datetime.now(UTC)
        )
    )
    typer.echo(f"rollout {rid} created; `microfleet ota status {rid}` shows its progress")


@app.command()
def pause(rollout_id: int) -> None:
    from cloud.ota import store

    _run(lambda c: store.pause(c, rollout_id))
    typer.echo(f"rollout {rollout_id} paused")


@app.command()
def resume(rollout_id: int) -> None:
    """Resume; the failures seen so far are acknowledged by the error gate."""
    from cloud.ota import store

    _run(lambda c: store.resume(c, rollout_id))
    typer.echo(f"rollout {rollout_id} running")


@app.command()
def cancel(rollout_id: int, force: Annotated[bool, typer.Option("--force")] = False) -> None:
    """Queued jobs at once; running ones when the device confirms (or at once with --force)."""
    from cloud.ota import store

    _run(lambda c: store.cancel(c, rollout_id, force=force))
    typer.echo(f"rollout {rollout_id} cancelling{' (forced)' if force else ''}")


@app.command()
def rollback(rollout_id: int, soak: Annotated[float, typer.Option()] = 0.0) -> None:
    """A new rollout of the previous release to the devices this rollout updated."""
    from cloud.ota import store
    from cloud.ota.artifacts import artifact_dir
    from cloud.ota.rollout import RolloutPlan

    trust = _trust()
    plan = RolloutPlan(percents=(10.0, 100.0), soak_s=soak)
    rid = _run(
        lambda c: store.rollback(
            c, rollout_id, plan, store=artifact_dir(), trust=trust, now=datetime.now(UTC)
        )
    )
    typer.echo(f"rollback rollout {rid} created")


def _render(view: dict[str, Any]) -> Any:
    from rich.table import Table

    states = sorted({k for w in view["waves"] for k in w["states"]})
    reason = f" ({view['reason']})" if view["reason"] else ""
    table = Table(title=f"rollout {view['rollout_id']}: {view['status']} at wave {view['wave']}{reason}")
    table.add_column("wave")
    table.add_column("devices", justify="right")
    for state in states:
        table.add_column(state, justify="right")
    for i, w in enumerate(view["waves"]):
        table.add_row(str(i), str(w["size"]), *(str(w["states"].get(s, 0)) for s in states))
    return table


async def _watch(conn: Any, rollout_id: int, interval: float, as_json: bool) -> None:
    """Refresh every `interval` seconds until the rollout ends (completed or cancelled)."""
    from rich.live import Live

    from cloud.ota import listing

    if as_json:  # one line per refresh, flushed, so a pipe sees each at once
        while True:
            view = await listing.rollout_view(conn, rollout_id)
            print(_dumps(view), flush=True)
            if view["done"]:
                return
            await asyncio.sleep(interval)
    view = await listing.rollout_view(conn, rollout_id)
    with Live(_render(view), auto_refresh=False) as live:
        while not view["done"]:
            await asyncio.sleep(interval)
            view = await listing.rollout_view(conn, rollout_id)
            live.update(_render(view), refresh=True)


@app.command()
def status(
    rollout_id: int,
    as_json: Json = False,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Refresh until the rollout ends or Ctrl-C (with --json: a line each)."),
    ] = False,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between refreshes with --watch.")] = 2.0,
) -> None:
    """Counts per state per wave (`microfleet ota rollout list` lists the rollouts)."""
    from cloud.ota import listing

    if watch:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the watch, not the rollout
            _run(lambda c: _watch(c, rollout_id, interval, as_json))
        return
    view = _run(lambda c: listing.rollout_view(c, rollout_id))
    if as_json:
        typer.echo(_dumps(view))
        return
    typer.echo(f"rollout {rollout_id}: {view['status']} at wave {view['wave']} {view['reason']}")
    for i, w in enumerate(view["waves"]):
        states = ", ".join(f"{k} {v}" for k, v in sorted(w["states"].items()))
        typer.echo(f"  wave {i} ({w['size']}): {states}")


@app.command()
def serve(
    artifact_base_url: Annotated[str, typer.Option(envvar="MICROFLEET_ARTIFACT_BASE_URL")],
    metrics_port: MetricsPort = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the OTA service: read device reports (stored by ingest), apply rollout decisions, publish jobs.
    Runs until SIGTERM/SIGINT: the tick in hand finishes, it disconnects from the broker and exits 0.

    Logs: MICROFLEET_LOG_LEVEL, MICROFLEET_LOG_FORMAT=json for one JSON object per line."""
    from cloud.ota.service import OtaService, OtaServiceConfig

    cfg = service_cli.configure(verbose)
    service = OtaService(
        OtaServiceConfig(cfg.database_url, cfg.mqtt_url, artifact_base_url, mqtt_ca_file=cfg.mqtt_ca_file),
        metrics_port=metrics_port if metrics_port is not None else cfg.metrics_port,
        metrics_host=cfg.metrics_host,
    )
    service_cli.run(lambda: asyncio.run(service.serve()))
