"""The OTA service: the one process that talks MQTT for firmware updates.

- reads the devices' reports from the database: ingest stores every `mf/v1/<id>/up/ota` report
  (ota_reports, and the newest state per job in ota_device_jobs) in the same transaction as the rest of
  the telemetry and acknowledges the broker only after the commit, so no report is lost while this
  service restarts (a subscription of its own would drop what arrives while it is down);
- every `tick_s`, for each running rollout, asks the pure planner (rollout.py) what to do and applies it:
  publish retained OtaJobs for the next devices (pacing), record the success gate, advance, pause on the
  error gate, complete; for a cancelling rollout, publish a cancel (retained, same job id) to every device
  whose job was sent, and mark the rollout cancelled once no job is unfinished.

Every time its broker connection comes up (the first time, and after a broker restart that may have
lost retained messages saved in the last 5 s), it sends again the desired state its identity owns:
each device's OTA job in flight and each device's assigned protocol (desired.py), before the next tick.

MQTT goes through cloud.runtime's threaded Publisher (TLS, credentials, reconnect with backoff), called
with asyncio.to_thread: a job counts as sent only once the broker took it (PUBACK < 0x80; 0x10 is fine
for a retained job); one refused, unacknowledged or not sent for want of a connection stays pending and
is sent at a later tick.

    await OtaService(config).serve()    # until SIGTERM/SIGINT: the tick in hand ends, then it disconnects
    await service.run()                 # until request_stop() (or cancelled)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from cloud.ota import desired, store
from cloud.ota.artifacts import release_by_id
from cloud.ota.metrics import OtaMetrics
from cloud.ota.rollout import Advance, Complete, Dispatch, GateMet, Pause, WaveCounts, decide
from cloud.runtime.metrics import MetricsServer, dsn_check
from cloud.runtime.publisher import Outgoing, Publisher
from contract import topics
from contract.codec import encode
from contract.ota import OtaAction, OtaJob

log = logging.getLogger(__name__)
PUBLISH_WINDOW = 100
PUBACK_TIMEOUT_S = 10.0


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class OtaServiceConfig:
    database_url: str
    mqtt_url: str
    artifact_base_url: str  # e.g. http://fw.example.com/artifacts (the file name is appended)
    group: str = "ota"
    tick_s: float = 1.0
    mqtt_ca_file: str | None = None


class OtaService:
    def __init__(
        self,
        config: OtaServiceConfig,
        *,
        clock: Callable[[], datetime] = utc_now,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        """metrics_port: serve /metrics, /healthz and /readyz there while run() runs (0: any free port)."""
        self.config = config
        self.clock = clock
        self._publisher: Publisher | None = None
        self.subscribed = asyncio.Event()  # connected to the broker: jobs can be published
        self._stopping = asyncio.Event()
        self._resend = threading.Event()  # set by the publisher's on_up: send the desired state again
        self.resent = 0  # desired-state messages sent again after a connect
        self.metrics = OtaMetrics()
        self.metrics_server = MetricsServer.optional(
            f"ota-{config.group}",
            self.metrics.registry,
            port=metrics_port,
            host=metrics_host,
            checks={"broker": self._broker_connected, "database": dsn_check(config.database_url)},
        )

    def _broker_connected(self) -> bool:
        publisher = self._publisher
        return publisher is not None and publisher.connected.is_set()

    def request_stop(self) -> None:
        """Stop after the tick in hand (call on the service's event loop, e.g. from a signal handler)."""
        self._stopping.set()

    async def serve(self) -> None:
        """`run` until SIGTERM or SIGINT: the tick in hand finishes, the publisher disconnects (a clean
        DISCONNECT), and this returns (the command exits 0)."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.run()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    # -- MQTT ----------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until request_stop() (or cancelled). The broker connection and the database are its own."""
        publisher = Publisher(
            self.config.mqtt_url,
            f"ota-{uuid.uuid4().hex[:8]}",
            ca_file=self.config.mqtt_ca_file,
            inflight=PUBLISH_WINDOW,
        )
        publisher.mqtt.on_up.append(lambda _session_present: self._resend.set())
        if self.metrics_server is not None:
            self.metrics_server.start()
        publisher.start()
        self._publisher = publisher
        try:
            while not await asyncio.to_thread(publisher.wait_connected, 1.0):
                if self._stopping.is_set():
                    return
            self.subscribed.set()
            log.info("OTA service connected to %s", publisher.mqtt.redacted)
            await self._ticker()
        finally:
            self._publisher = None
            self.subscribed.clear()
            await asyncio.to_thread(publisher.stop)
            if self.metrics_server is not None:
                await asyncio.to_thread(self.metrics_server.stop)
            log.info("OTA service stopped")

    async def _ticker(self) -> None:
        async with await AsyncConnection.connect(self.config.database_url, autocommit=True) as conn:
            while not self._stopping.is_set():
                started = time.perf_counter()
                try:
                    if self._resend.is_set():
                        self._resend.clear()
                        await self._resend_desired(conn)
                    await self.tick(conn)
                except Exception:  # one bad tick must not stop the service; the next one retries
                    self.metrics.tick_failures.inc()
                    log.exception("OTA tick failed")
                self.metrics.ticks.inc()
                self.metrics.tick_seconds.observe(time.perf_counter() - started)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.config.tick_s)

    async def _resend_desired(self, conn: AsyncConnection[Any]) -> None:
        """Send the desired state this service owns again (retained, QoS 1), in windows; if the broker
        does not take all of it, everything is tried again at the next tick.

        A protocol published meanwhile (`protocol publish` stores, then sends) could be overtaken by the
        older document read here; so the assignments are read again afterwards and a device whose
        assignment changed gets its current document once more (the publisher's own send, or this one,
        is then the last)."""
        publisher = self._publisher
        if publisher is None:
            return
        protocols = await desired.protocols(conn)
        messages = [*protocols, *await desired.ota_jobs(conn, self.config.artifact_base_url)]
        try:
            ok = await self._publish_retained(publisher, messages)
            if ok:
                before = dict(protocols)
                changed = [(t, p) for t, p in await desired.protocols(conn) if before.get(t, p) != p]
                ok = await self._publish_retained(publisher, changed)
        except BaseException:
            self._resend.set()
            raise
        if not ok:
            self._resend.set()
        elif messages:
            log.info(
                "connected: %d retained desired-state messages sent again (protocols, OTA jobs)",
                len(messages),
            )

    async def _publish_retained(self, publisher: Publisher, messages: list[tuple[str, bytes]]) -> bool:
        for i in range(0, len(messages), PUBLISH_WINDOW):
            chunk = [Outgoing(t, p, True) for t, p in messages[i : i + PUBLISH_WINDOW]]
            outcomes = await asyncio.to_thread(publisher.publish_many, chunk, PUBACK_TIMEOUT_S)
            self.resent += sum(1 for o in outcomes if o.accepted)
            if not all(o.accepted for o in outcomes):
                first = next(o for o in outcomes if not o.accepted)
                log.warning("desired state not all taken by the broker (%s); sent again next tick", first)
                return False
        return True

    # -- decisions -----------------------------------------------------------------------------------
    async def tick(self, conn: AsyncConnection[Any]) -> None:
        active: list[tuple[int, int, list[WaveCounts]]] = []
        for rollout_id in await store.active_rollouts(conn):
            r = await store.get_rollout(conn, rollout_id)
            if r.view.status == "cancelling":
                await self._cancel_sent(conn, rollout_id)
                continue
            now = self.clock()
            await self._expire(conn, r, now)
            counts = await store.counts(conn, rollout_id)
            active.append((rollout_id, r.view.wave, counts))
            for d in decide(r.plan, r.view, counts, now):
                if isinstance(d, Dispatch):
                    await self._dispatch(conn, r, d.wave, d.count, now)
                elif isinstance(d, GateMet):
                    await self._update(conn, rollout_id, "gate_met_at = %s", d.at)
                elif isinstance(d, Advance):
                    log.info("rollout %d: wave %d starts", rollout_id, d.wave)
                    await self._update(conn, rollout_id, "wave = %s, gate_met_at = NULL", d.wave)
                elif isinstance(d, Pause):
                    log.warning("rollout %d paused: %s", rollout_id, d.reason)
                    await self._update(conn, rollout_id, "status = 'paused', status_reason = %s", d.reason)
                elif isinstance(d, Complete):
                    await self._update(conn, rollout_id, "status = 'completed'", None)
        cur = await conn.execute("SELECT status, count(*) FROM ota_rollouts GROUP BY status")
        self.metrics.progress({str(s): int(n) for s, n in await cur.fetchall()}, active)

    @staticmethod
    async def _expire(conn: AsyncConnection[Any], r: store.Rollout, now: datetime) -> None:
        """A job with no final report by its deadline failed (retryable): a lost job, a device gone."""
        await conn.execute(
            "UPDATE ota_device_jobs SET state = 'failed', retryable = true, updated_at = now(), "
            "reason = 'no final report before the job deadline' WHERE rollout_id = %s AND sent_at < %s "
            "AND state NOT IN ('pending', 'succeeded', 'failed', 'rolled_back', 'cancelled')",
            (r.rollout_id, now - timedelta(seconds=r.plan.job_deadline_s)),
        )

    @staticmethod
    async def _update(conn: AsyncConnection[Any], rollout_id: int, sql: str, arg: object) -> None:
        args = (rollout_id,) if arg is None else (arg, rollout_id)
        await conn.execute(f"UPDATE ota_rollouts SET {sql}, updated_at = now() WHERE rollout_id = %s", args)

    async def _dispatch(
        self, conn: AsyncConnection[Any], r: store.Rollout, wave: int, n: int, now: datetime
    ) -> None:
        release = await release_by_id(conn, r.release_id)
        cur = await conn.execute(
            "SELECT job_id, device_id FROM ota_device_jobs WHERE rollout_id = %s AND wave = %s AND state = 'pending' "
            "ORDER BY job_id LIMIT %s",
            (r.rollout_id, wave, n),
        )
        jobs = [(str(a), str(b)) for a, b in await cur.fetchall()]
        url = f"{self.config.artifact_base_url.rstrip('/')}/{release.manifest.artifact}"
        deadline = store.job_deadline(r.plan, now)
        taken = await self._publish_all(
            [
                (
                    device_id,
                    OtaJob(
                        device_id=device_id,
                        ts=now,
                        job_id=job_id,
                        rollout_id=r.rollout_id,
                        manifest=release.signed,
                        url=url,
                        deadline=deadline,
                    ),
                )
                for job_id, device_id in jobs
            ]
        )
        await conn.execute(
            "UPDATE ota_device_jobs SET state = 'sent', sent_at = %s, updated_at = now() "
            "WHERE job_id = ANY(%s) AND state = 'pending'",
            (now, [j for (j, _), ok in zip(jobs, taken, strict=True) if ok]),
        )

    async def _cancel_sent(self, conn: AsyncConnection[Any], rollout_id: int) -> None:
        now = self.clock()
        cur = await conn.execute(
            "SELECT job_id, device_id FROM ota_device_jobs WHERE rollout_id = %s AND sent_at IS NOT NULL "
            "AND cancel_sent_at IS NULL AND state NOT IN ('succeeded', 'failed', 'rolled_back')",
            (rollout_id,),
        )
        jobs = [(str(a), str(b)) for a, b in await cur.fetchall()]
        taken = await self._publish_all(
            [
                (d, OtaJob(device_id=d, ts=now, job_id=j, rollout_id=rollout_id, action=OtaAction.CANCEL))
                for j, d in jobs
            ]
        )
        if any(taken):
            await conn.execute(
                "UPDATE ota_device_jobs SET cancel_sent_at = %s WHERE job_id = ANY(%s)",
                (now, [j for (j, _), ok in zip(jobs, taken, strict=True) if ok]),
            )
        cur = await conn.execute(
            "SELECT count(*) FROM ota_device_jobs WHERE rollout_id = %s "
            "AND state NOT IN ('succeeded', 'failed', 'rolled_back', 'cancelled')",
            (rollout_id,),
        )
        row = await cur.fetchone()
        if row is not None and int(row[0]) == 0:
            await self._update(conn, rollout_id, "status = 'cancelled'", None)

    async def _publish_all(self, jobs: list[tuple[str, OtaJob]]) -> list[bool]:
        """Publish each job retained at QoS 1; True for each one the broker took."""
        publisher = self._publisher
        if publisher is None:
            raise RuntimeError("the OTA service is not running")
        if not jobs:
            return []
        messages = [
            Outgoing(topics.downlink(device_id, topics.Downlink.OTA), encode(job), True)
            for device_id, job in jobs
        ]
        outcomes = await asyncio.to_thread(publisher.publish_many, messages, PUBACK_TIMEOUT_S)
        taken = [o.accepted for o in outcomes]
        action = jobs[0][1].action.value
        self.metrics.published.labels(action=action, outcome="sent").inc(taken.count(True))
        self.metrics.published.labels(action=action, outcome="refused").inc(taken.count(False))
        if not all(taken):
            first = next(o for o in outcomes if not o.accepted)
            log.warning(
                "%d of %d OTA jobs not taken by the broker (%s); sent again later",
                taken.count(False),
                len(jobs),
                first,
            )
        return taken
