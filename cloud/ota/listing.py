"""What operators list and watch, shared by `microfleet ota ...` and the /ota routes: releases, rollouts
(newest first, with their device counts), and one rollout's progress view as a JSON-ready dict."""

from __future__ import annotations

from typing import Any

import msgspec
from psycopg import AsyncConnection

from cloud.ota import store
from cloud.ota.artifacts import list_releases

ROLLOUT_STATUSES = ("running", "paused", "cancelling", "cancelled", "completed")
ENDED = frozenset({"cancelled", "completed"})
FAILED_STATES = ("failed", "rolled_back")

LIST_ROLLOUTS = """
select r.rollout_id, f.version, r.status, r.wave, coalesce(r.status_reason, '') as reason, r.rollback_of,
       r.created_at, r.updated_at,
       count(j.job_id) as devices,
       count(j.job_id) filter (where j.state = 'succeeded') as succeeded,
       count(j.job_id) filter (where j.state = any(%(failed)s)) as failed,
       count(j.job_id) filter (where j.state = 'pending') as pending
from ota_rollouts r
join firmware_releases f on f.release_id = r.release_id
left join ota_device_jobs j on j.rollout_id = r.rollout_id
where (%(status)s::text is null or r.status = %(status)s)
group by r.rollout_id, f.version
order by r.rollout_id desc
limit %(limit)s
"""
COLUMNS = (
    "rollout_id", "version", "status", "wave", "reason", "rollback_of", "created_at", "updated_at",
    "devices", "succeeded", "failed", "pending",
)  # fmt: skip


async def releases(conn: AsyncConnection[Any]) -> list[dict[str, Any]]:
    """Every release, oldest version code first: its manifest fields and release_id."""
    return [msgspec.to_builtins(r.manifest) | {"release_id": r.release_id} for r in await list_releases(conn)]


async def rollouts(
    conn: AsyncConnection[Any], status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Rollouts newest first (optionally of one status) with their job counts; times stay datetimes."""
    cur = await conn.execute(LIST_ROLLOUTS, {"status": status, "limit": limit, "failed": list(FAILED_STATES)})
    return [dict(zip(COLUMNS, row, strict=True)) for row in await cur.fetchall()]


async def rollout_view(conn: AsyncConnection[Any], rollout_id: int) -> dict[str, Any]:
    """One rollout's progress: status, reason, current wave, counts per state per wave, and `done` (it
    ended: completed or cancelled). Raises ReleaseRefused for an unknown rollout."""
    r = await store.get_rollout(conn, rollout_id)
    waves = await store.counts(conn, rollout_id)
    return {
        "rollout_id": rollout_id,
        "status": r.view.status,
        "reason": r.status_reason,
        "wave": r.view.wave,
        "done": r.view.status in ENDED,
        "waves": [{"size": w.size, "states": w.by_state} for w in waves],
    }
