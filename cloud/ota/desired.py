"""The retained desired state the OTA service's identity (svc-ota) owns, read back from the database so
it can be sent again: each device's OTA job still in flight, and each device's assigned protocol.

Why: the broker keeps retained messages in memory and saves them every `autosave_interval` (5 s); a
broker that crashes loses what it took since, and nothing else would send it again (the protocol
publisher is a one-shot command). So the OTA service sends all of it again every time its connection
comes up (cloud/ota/service.py). Resending is harmless: a device gets its retained messages again at
every subscribe anyway, and the agent treats a job id or a protocol version it already has as such.

    messages = [*await protocols(conn), *await ota_jobs(conn, artifact_base_url)]   # [(topic, payload)]
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from psycopg import AsyncConnection

from cloud.ota import store
from cloud.ota.artifacts import Release, release_by_id
from contract import topics
from contract.codec import encode
from contract.ota import OtaAction, OtaJob
from contract.signing import SignedDocument

IN_FLIGHT_JOBS = """
SELECT job_id, device_id, rollout_id, sent_at, cancel_sent_at IS NOT NULL FROM ota_device_jobs
WHERE sent_at IS NOT NULL AND state NOT IN ('succeeded', 'failed', 'rolled_back', 'cancelled')
ORDER BY greatest(sent_at, cancel_sent_at), job_id
"""
ASSIGNED_PROTOCOLS = """
SELECT a.device_id, p.signed FROM protocol_assignments a
JOIN protocols p ON p.protocol_id = a.protocol_id AND p.version = a.version ORDER BY a.device_id
"""


async def ota_jobs(conn: AsyncConnection[Any], artifact_base_url: str) -> list[tuple[str, bytes]]:
    """Every job sent and not finished, as it was sent (or its cancel, if one was sent), in the order
    they were sent: when a device has two, the newer one is published last and stays retained."""
    cur = await conn.execute(IN_FLIGHT_JOBS)
    rows = await cur.fetchall()
    rollouts: dict[int, tuple[store.Rollout, Release]] = {}
    out: list[tuple[str, bytes]] = []
    for job_id, device_id, rollout_id, sent_at, cancelled in rows:
        job_id, device_id = str(job_id), str(device_id)
        if cancelled:
            job = OtaJob(
                device_id=device_id,
                ts=datetime.now(UTC),
                job_id=job_id,
                rollout_id=rollout_id,
                action=OtaAction.CANCEL,
            )
        else:
            if rollout_id not in rollouts:
                r = await store.get_rollout(conn, rollout_id)
                rollouts[rollout_id] = (r, await release_by_id(conn, r.release_id))
            r, release = rollouts[rollout_id]
            job = OtaJob(
                device_id=device_id,
                ts=datetime.now(UTC),
                job_id=job_id,
                rollout_id=rollout_id,
                manifest=release.signed,
                url=f"{artifact_base_url.rstrip('/')}/{release.manifest.artifact}",
                deadline=store.job_deadline(r.plan, sent_at),
            )
        out.append((topics.downlink(device_id, topics.Downlink.OTA), encode(job)))
    return out


async def protocols(conn: AsyncConnection[Any]) -> list[tuple[str, bytes]]:
    """Each device's assigned protocol, the stored signed document (what `protocol publish` sent)."""
    cur = await conn.execute(ASSIGNED_PROTOCOLS)
    return [
        (
            topics.downlink(str(device_id), topics.Downlink.PROTOCOL),
            msgspec.json.encode(msgspec.convert(signed, SignedDocument)),
        )
        for device_id, signed in await cur.fetchall()
    ]
