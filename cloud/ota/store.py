"""Rollouts in the database: create (with the cloud-side refusals), pause, resume, cancel, roll back, and
the progress view (counts per state per wave). Used by the CLI, the API and service.py alike.

Operators only change rows here; service.py (the one process that talks MQTT for OTA) publishes what
follows: jobs for the next devices, cancels. So a command works while the service is down, and takes
effect when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from psycopg import AsyncConnection

from cloud.ota.artifacts import Release, ReleaseRefused, check_publishable, get_release, release_by_id
from cloud.ota.rollout import RolloutPlan, RolloutView, WaveCounts, assign_waves
from contract.ota import refusal
from contract.signing import TrustStore


@dataclass(frozen=True, slots=True)
class Targets:
    models: tuple[str, ...] = ()  # empty: every model the release fits
    hw_revs: tuple[str, ...] = ()
    fw_versions: tuple[str, ...] = ()  # current firmware
    tags: tuple[str, ...] = ()  # devices with any of these tags
    devices: tuple[str, ...] = ()  # explicit device ids


@dataclass(frozen=True, slots=True)
class Rollout:
    rollout_id: int
    release_id: int
    plan: RolloutPlan
    view: RolloutView
    force_cancel: bool
    status_reason: str


async def _targets(
    conn: AsyncConnection[Any], release: Release, t: Targets
) -> list[tuple[str, str, str, str]]:
    m = release.manifest
    models = [x for x in (t.models or m.models) if x in m.models]
    if t.models and not models:
        raise ReleaseRefused(
            f"release {m.version} fits models {', '.join(m.models)}, none of {', '.join(t.models)}"
        )
    where = ["d.model = ANY(%s)"]
    args: list[Any] = [models]
    if t.hw_revs:
        where.append("d.hw_rev = ANY(%s)")
        args.append(list(t.hw_revs))
    if t.fw_versions:
        where.append("d.fw_version = ANY(%s)")
        args.append(list(t.fw_versions))
    if t.tags:
        where.append("d.tags && %s::text[]")  # any of the tags (GIN index on devices.tags)
        args.append(list(t.tags))
    if t.devices:
        where.append("d.device_id = ANY(%s)")
        args.append(list(t.devices))
    cur = await conn.execute(
        "SELECT d.device_id, d.model, coalesce(d.hw_rev, ''), coalesce(d.fw_version, '') FROM devices d "
        f"WHERE {' AND '.join(where)} ORDER BY d.device_id",
        args,
    )
    return [(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in await cur.fetchall()]


async def create_rollout(
    conn: AsyncConnection[Any],
    version: str,
    targets: Targets,
    plan: RolloutPlan,
    *,
    store: Path,
    trust: TrustStore,
    now: datetime,
    rollback_of: int | None = None,
) -> int:
    """Create a rollout with every target as a pending job in its wave. Refuses (ReleaseRefused) a release
    that devices would refuse: bad signature, tampered artifact, model or revision, anti-rollback."""
    release = await get_release(conn, version)
    check_publishable(release, store, trust, now)
    devices = await _targets(conn, release, targets)
    codes = dict(
        (str(r[0]), int(r[1]))
        for r in await (await conn.execute("SELECT version, version_code FROM firmware_releases")).fetchall()
    )
    eligible: list[str] = []
    refused: dict[str, list[str]] = {}
    for device_id, model, hw_rev, fw in devices:
        if fw == version:
            continue  # already there
        why = refusal(release.manifest, model=model, hw_rev=hw_rev, floor_code=codes.get(fw, 0))
        if why is None:
            eligible.append(device_id)
        else:
            refused.setdefault(why, []).append(device_id)
    if refused:
        why, ids = max(refused.items(), key=lambda kv: len(kv[1]))
        raise ReleaseRefused(
            f"{sum(map(len, refused.values()))} targeted devices would refuse release {version}, e.g. "
            f"{ids[0]}: {why}. Narrow the targets (--fw, --hw-rev, --tag) or publish a fitting release"
        )
    if not eligible:
        raise ReleaseRefused(f"no device matches the targets for release {version} (or all run it already)")
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO ota_rollouts (release_id, plan, status, rollback_of) VALUES (%s, %s::jsonb, 'running', %s) "
            "RETURNING rollout_id",
            (release.release_id, msgspec.json.encode(plan).decode(), rollback_of),
        )
        row = await cur.fetchone()
        assert row is not None
        rollout_id = int(row[0])
        rows = [
            (f"r{rollout_id}-{d}", rollout_id, d, w)
            for w, wave in enumerate(assign_waves(str(rollout_id), eligible, plan))
            for d in wave
        ]
        async with (
            conn.cursor() as c,
            c.copy("COPY ota_device_jobs (job_id, rollout_id, device_id, wave, state) FROM STDIN") as copy,
        ):
            for r in rows:
                await copy.write_row((*r, "pending"))
    return rollout_id


async def get_rollout(conn: AsyncConnection[Any], rollout_id: int) -> Rollout:
    cur = await conn.execute(
        "SELECT rollout_id, release_id, plan, status, wave, gate_met_at, error_baseline, force_cancel, "
        "coalesce(status_reason, '') FROM ota_rollouts WHERE rollout_id = %s",
        (rollout_id,),
    )
    r = await cur.fetchone()
    if r is None:
        raise ReleaseRefused(f"no rollout {rollout_id}: list them with `microfleet ota rollout list`")
    baseline = {int(k): int(v) for k, v in dict(r[6]).items()}
    return Rollout(
        int(r[0]),
        int(r[1]),
        msgspec.convert(r[2], RolloutPlan),
        RolloutView(str(r[3]), int(r[4]), r[5], baseline),
        bool(r[7]),
        str(r[8]),
    )


async def active_rollouts(conn: AsyncConnection[Any]) -> list[int]:
    cur = await conn.execute(
        "SELECT rollout_id FROM ota_rollouts WHERE status IN ('running', 'cancelling') ORDER BY rollout_id"
    )
    return [int(r[0]) for r in await cur.fetchall()]


async def counts(conn: AsyncConnection[Any], rollout_id: int) -> list[WaveCounts]:
    """Counts per state per wave (the progress view)."""
    cur = await conn.execute(
        "SELECT wave, state, count(*) FROM ota_device_jobs WHERE rollout_id = %s GROUP BY wave, state",
        (rollout_id,),
    )
    per: dict[int, dict[str, int]] = {}
    for wave, state, n in await cur.fetchall():
        per.setdefault(int(wave), {})[str(state)] = int(n)
    n_waves = max(per, default=-1) + 1
    return [WaveCounts(sum(per.get(w, {}).values()), per.get(w, {})) for w in range(n_waves)]


async def _set_status(
    conn: AsyncConnection[Any], rollout_id: int, allowed: tuple[str, ...], sql: str, args: tuple[Any, ...]
) -> Rollout:
    r = await get_rollout(conn, rollout_id)
    if r.view.status not in allowed:
        raise ReleaseRefused(
            f"rollout {rollout_id} is {r.view.status}: this works only when it is {' or '.join(allowed)}"
        )
    await conn.execute(
        f"UPDATE ota_rollouts SET {sql}, updated_at = now() WHERE rollout_id = %s", (*args, rollout_id)
    )
    return await get_rollout(conn, rollout_id)


async def pause(
    conn: AsyncConnection[Any], rollout_id: int, reason: str = "paused by an operator"
) -> Rollout:
    return await _set_status(
        conn, rollout_id, ("running",), "status = 'paused', status_reason = %s", (reason,)
    )


async def resume(conn: AsyncConnection[Any], rollout_id: int) -> Rollout:
    """Resume a paused rollout; the failures seen so far in the current wave are acknowledged (the error
    gate counts only new ones)."""
    async with conn.transaction():
        r = await get_rollout(conn, rollout_id)
        waves = await counts(conn, rollout_id)
        errors = waves[r.view.wave].errors if r.view.wave < len(waves) else 0
        baseline = {**{str(k): v for k, v in r.view.error_baseline.items()}, str(r.view.wave): errors}
        return await _set_status(
            conn,
            rollout_id,
            ("paused",),
            "status = 'running', status_reason = NULL, error_baseline = %s::jsonb",
            (msgspec.json.encode(baseline).decode(),),
        )


async def cancel(conn: AsyncConnection[Any], rollout_id: int, *, force: bool = False) -> Rollout:
    """Pending jobs are cancelled at once. Sent ones get a cancel (service.py): a device that has not
    started installing stops and confirms; one that is installing finishes. With `force`, every unfinished
    job counts as cancelled now, without waiting for the devices."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE ota_device_jobs SET state = 'cancelled', reason = 'cancelled before it was sent', "
            "updated_at = now() WHERE rollout_id = %s AND state = 'pending'",
            (rollout_id,),
        )
        if force:
            await conn.execute(
                "UPDATE ota_device_jobs SET state = 'cancelled', reason = 'cancelled by force', updated_at = now() "
                "WHERE rollout_id = %s AND state NOT IN ('succeeded', 'failed', 'rolled_back', 'cancelled')",
                (rollout_id,),
            )
        return await _set_status(
            conn,
            rollout_id,
            ("running", "paused", "cancelling"),
            "status = 'cancelling', force_cancel = force_cancel OR %s",
            (force,),
        )


async def rollback(
    conn: AsyncConnection[Any],
    rollout_id: int,
    plan: RolloutPlan,
    *,
    store: Path,
    trust: TrustStore,
    now: datetime,
) -> int:
    """A new rollout of the previous release to the devices this rollout updated (the original is cancelled
    first). Refused when the previous release's anti-rollback number is below this one's."""
    r = await get_rollout(conn, rollout_id)
    current = await release_by_id(conn, r.release_id)
    cur = await conn.execute(
        "SELECT version FROM firmware_releases WHERE models && %s AND release_id <> %s AND "
        "created_at <= (SELECT created_at FROM firmware_releases WHERE release_id = %s) "
        "ORDER BY version_code DESC, created_at DESC LIMIT 1",
        (list(current.manifest.models), current.release_id, current.release_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise ReleaseRefused(f"there is no release before {current.version} to roll back to")
    previous = await get_release(conn, str(row[0]))
    if previous.manifest.version_code < current.manifest.version_code:
        raise ReleaseRefused(
            f"cannot roll back to {previous.version}: its version_code {previous.manifest.version_code} is below "
            f"{current.manifest.version_code} of {current.version}, and devices refuse a downgrade below their "
            f"anti-rollback floor. Publish a fixed release with version_code >= {current.manifest.version_code}"
        )
    if r.view.status in ("running", "paused"):
        await cancel(conn, rollout_id)
    cur = await conn.execute(
        "SELECT device_id FROM ota_device_jobs WHERE rollout_id = %s AND state IN ('succeeded', 'health_check', "
        "'rebooting', 'installing')",
        (rollout_id,),
    )
    devices = tuple(str(x[0]) for x in await cur.fetchall())
    if not devices:
        raise ReleaseRefused(f"rollout {rollout_id} updated no device: nothing to roll back")
    return await create_rollout(
        conn,
        previous.version,
        Targets(devices=devices),
        plan,
        store=store,
        trust=trust,
        now=now,
        rollback_of=rollout_id,
    )


def job_deadline(plan: RolloutPlan, now: datetime) -> datetime:
    return now + timedelta(seconds=plan.job_deadline_s)
