"""`microfleet ota ...`: releases, rollouts and their progress (counts per state per wave).

Environment: MICROFLEET_DATABASE_URL, MICROFLEET_ARTIFACT_DIR (artifact store),
MICROFLEET_SIGNING_KEY_FILE (Ed25519 PEM from `microfleet keys generate`), MICROFLEET_OTA_TRUSTED_KEYS (the
JSON list of TrustedKey devices trust; a rollout is refused unless its manifest verifies with it).
`microfleet ota serve` runs the OTA service (MQTT + rollouts); artifacts are served by the API app.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer

app = typer.Typer(no_args_is_help=True, help="Firmware over the air: releases, staged rollouts, progress.")
release_app = typer.Typer(no_args_is_help=True, help="Firmware releases (artifact + signed manifest).")
rollout_app = typer.Typer(no_args_is_help=True, help="Create a staged rollout.")
app.add_typer(release_app, name="release")
app.add_typer(rollout_app, name="rollout")
T = TypeVar("T")


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


@app.command()
def status(rollout_id: int) -> None:
    """Counts per state per wave."""
    from cloud.ota import store

    async def work(conn: Any) -> tuple[Any, Any]:
        return await store.get_rollout(conn, rollout_id), await store.counts(conn, rollout_id)

    r, waves = _run(work)
    typer.echo(f"rollout {rollout_id}: {r.view.status} at wave {r.view.wave} {r.status_reason}")
    for i, w in enumerate(waves):
        states = ", ".join(f"{k} {v}" for k, v in sorted(w.by_state.items()))
        typer.echo(f"  wave {i} ({w.size}): {states}")


@app.command()
def serve(artifact_base_url: Annotated[str, typer.Option(envvar="MICROFLEET_ARTIFACT_BASE_URL")]) -> None:
    """Run the OTA service: read device reports (stored by ingest), apply rollout decisions, publish jobs."""
    from cloud.config import CloudConfig
    from cloud.ota.service import OtaService, OtaServiceConfig

    cfg = CloudConfig.from_env()
    service = OtaService(OtaServiceConfig(cfg.database_url, cfg.mqtt_url, artifact_base_url))
    asyncio.run(service.run())
