"""Composition root of one ingest process: consumer (paho thread) -> handoff -> writer threads -> acks,
and the commit marks back to the devices.

Threads, each owned and joined by IngestService (cloud.runtime.threads: one that dies takes the process
down): paho's network threads (Consumer, and the Publisher of commit marks), the writer threads
(MICROFLEET_INGEST_WRITERS of them, each with its own connection: each takes whole batches from the
handoff, one transaction per batch, and acks that batch's messages after its own COMMIT; two writers
commit concurrently as two ingest processes do: marks.py orders their mark locks, a redelivery's unique
violation or a deadlock is retried by the writer), the mark sender (every mark_interval_s: the devices whose
commit mark is due get a CommitMark downlink) and the ticker (live counters every few seconds, the
database housekeeping job every few minutes). `run()` stops on SIGTERM/SIGINT by leaving the group:
unsubscribe, every writer commits and acks what it holds, then DISCONNECT with session expiry 0 (a
scale-in strands nothing in a stopped member's session). A crash (SIGKILL) keeps the session.

The source is chosen by URL: with MICROFLEET_NATS_URL (`nats://h1:p1,nats://h2:p2`, the NATS tier) the
uplinks come from the JetStream durable named by the ingest group on the MQTT gateway's `$MQTT_msgs`
(cloud.runtime.jetstream: fetched in batches, acknowledged after commit, shared by every process), and
the commit marks go out through the gateway over MQTT 3.1.1 (MICROFLEET_MQTT_URL and _VERSION). Leaving
then means: fetch no more, commit and ack what is held; the durable stays for the other processes.

With MICROFLEET_ALERT_FEED=committed, the alert engine is fed from here (cloud.ingest.feed, docs/decisions/
alert-feed.md): after each COMMIT the writer hands the stored evaluated messages to the feed thread, which
publishes them on the same Publisher as the commit marks and acknowledges the batch's originals only once
the broker took the feed message; the writer goes on with the next batch meanwhile.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from datetime import timedelta
from types import FrameType
from typing import Any

import psycopg

from cloud.config import CloudConfig
from cloud.ingest import marks
from cloud.ingest.batcher import DEFAULT_LATE_HORIZON, Batcher
from cloud.ingest.feed import FeedSender, fed_pairs
from cloud.ingest.handoff import Handoff, utc_now
from cloud.ingest.metrics import IngestMetrics, newest_ts
from cloud.ingest.source import Source, UplinkSourceSpec, uplink_source
from cloud.ingest.writer import BatchWriter, Strategy, WriteResult
from cloud.runtime.db import Database
from cloud.runtime.metrics import MetricsServer, database_check
from cloud.runtime.mqtt import check_version
from cloud.runtime.publisher import Outgoing, Publisher
from cloud.runtime.threads import Threads
from contract import topics
from contract.codec import encode
from contract.errors import Reason
from contract.messages import CommitMark

log = logging.getLogger(__name__)

LATE_MARGIN = timedelta(days=1)
STATS_INTERVAL_S = 5.0
HOUSEKEEPING_INTERVAL_S = 300.0
STOP_GRACE_S = 15.0
MARK_LIMIT = 1000  # commit marks claimed per round
MARK_PUBACK_TIMEOUT_S = 10.0


@dataclass
class Stats:
    messages: int = 0
    samples: int = 0
    quarantined: int = 0
    batches: int = 0
    retries: int = 0
    commit_s_total: float = 0.0
    commit_s_max: float = 0.0
    marks_sent: int = 0
    marks_failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, r: WriteResult) -> None:
        with self.lock:
            self.messages += r.messages
            self.samples += r.samples
            self.quarantined += r.quarantined
            self.batches += 1
            self.retries += r.attempts - 1
            self.commit_s_total += r.commit_s
            self.commit_s_max = max(self.commit_s_max, r.commit_s)

    def line(self) -> str:
        with self.lock:
            mean_ms = 1000 * self.commit_s_total / self.batches if self.batches else 0.0
            return (
                f"messages={self.messages} samples={self.samples} quarantined={self.quarantined} "
                f"batches={self.batches} retries={self.retries} commit_ms_mean={mean_ms:.1f} "
                f"commit_ms_max={1000 * self.commit_s_max:.1f} marks_sent={self.marks_sent} "
                f"marks_failed={self.marks_failed}"
            )

    def record_marks(self, sent: int, failed: int) -> None:
        with self.lock:
            self.marks_sent += sent
            self.marks_failed += failed


def late_horizon_of(dsn: str) -> timedelta:
    """The late horizon of this database (batcher.late_horizon_for): on TimescaleDB compress_after minus a
    margin, on plain PostgreSQL the shortest retention of the tables ingest writes; never below the edge
    outbox's offline capacity plus a margin. The default if the database does not say."""
    from cloud.db.migrate import current_path
    from cloud.ingest.batcher import late_horizon_for

    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            path = current_path(conn)
            row = conn.execute(
                "SELECT min(compress_after), min(retention) FROM storage_policy "
                "WHERE relation IN ('samples', 'uplink_log', 'sessions', 'device_events')"
            ).fetchone()
    except psycopg.Error as exc:
        log.warning("late horizon not read from storage_policy (%s); using %s", exc, DEFAULT_LATE_HORIZON)
        return DEFAULT_LATE_HORIZON
    compress_after, retention = (None, None) if row is None else row
    horizon = late_horizon_for(None if path is None else str(path), compress_after, retention)
    log.info("late horizon %s (%s path)", horizon, path)
    return horizon


class MarkSender:
    """Claims the devices whose commit mark is due (cloud.ingest.marks) and sends each a CommitMark
    (QoS 1, not retained). A mark the broker did not take (>= 0x80, timeout, not connected) is unclaimed,
    to be sent again; 0x10 (the device is offline without a session) is not a failure: the device asks
    for its mark with a SyncRequest when it is back."""

    def __init__(
        self, db: Database, publisher: Publisher, stats: Stats, *, delay_s: float, every: int
    ) -> None:
        self.db, self.publisher, self.stats = db, publisher, stats
        self.delay_s, self.every = delay_s, every

    def round(self, limit: int = MARK_LIMIT) -> int:
        """One claim-publish round; returns how many marks were claimed."""
        if not self.publisher.connected.is_set():
            return 0
        with self.db.connection() as conn:
            due = marks.claim_due(conn, delay_s=self.delay_s, every=self.every, limit=limit)
        if not due:
            return 0
        now = utc_now()
        outcomes = self.publisher.publish_many(
            [
                Outgoing(
                    topics.downlink(device_id, topics.Downlink.COMMITTED),
                    encode(CommitMark(device_id=device_id, ts=now, through=through)),
                )
                for device_id, through in due
            ],
            MARK_PUBACK_TIMEOUT_S,
        )
        failed = [device_id for (device_id, _), o in zip(due, outcomes, strict=True) if not o.accepted]
        if failed:
            with self.db.connection() as conn:
                marks.unclaim(conn, failed)
            first = next(o for o in outcomes if not o.accepted)
            log.warning(
                "%d of %d commit marks not taken by the broker (%s); sent again", len(failed), len(due), first
            )
        self.stats.record_marks(len(due) - len(failed), len(failed))
        return len(due)

    def loop(self, stop: threading.Event, interval_s: float) -> None:
        while not stop.wait(interval_s):
            try:
                while self.round() == MARK_LIMIT and not stop.is_set():
                    pass
            except psycopg.Error as exc:
                log.warning("commit marks not sent (%s); retried in %.1f s", exc, interval_s)


def uplink_source_of(config: CloudConfig, on_message: Any) -> Source:
    """The ingest group's source (cloud.ingest.source: the JetStream durable when nats_url is set)."""
    return uplink_source(UplinkSourceSpec.of(config, config.ingest_group), on_message)


class IngestService:
    def __init__(
        self,
        config: CloudConfig,
        *,
        strategy: Strategy = "copy",
        housekeeping: bool = True,
        late_horizon: timedelta | None = None,
        stats_interval_s: float = STATS_INTERVAL_S,
        housekeeping_interval_s: float = HOUSEKEEPING_INTERVAL_S,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        """metrics_port: serve /metrics, /healthz and /readyz there (0: any free port; None: no server)."""
        self.config = config
        self.stats = Stats()
        self.horizon = late_horizon if late_horizon is not None else late_horizon_of(config.database_url)
        self.handoff: Handoff[Any] = Handoff(self._new_batcher())
        self.consumer = uplink_source_of(config, self.handoff.offer)
        self.db = Database(config.database_url, name=config.consumer_id, max_size=2)
        self.publisher = Publisher(
            config.mqtt_url,
            f"{config.consumer_id}-marks",
            ca_file=config.mqtt_ca_file,
            version=check_version(config.mqtt_version),
        )
        self.marks = MarkSender(
            self.db, self.publisher, self.stats, delay_s=config.mark_delay_s, every=config.mark_every
        )
        # the alert feed (committed mode): on the same Publisher, acking the originals once it is taken
        self.feed = (
            FeedSender(self.publisher, self.consumer.ack, consumer_id=config.consumer_id)
            if config.alert_feed == "committed"
            else None
        )
        self._feed_stop = threading.Event()
        if config.ingest_writers < 1:
            raise ValueError(f"ingest_writers must be >= 1, not {config.ingest_writers}")
        self.writers = [
            BatchWriter(
                config.database_url, consumer=config.consumer_id, strategy=strategy, marks=config.commit_marks
            )
            for _ in range(config.ingest_writers)
        ]
        self.metrics = IngestMetrics(self._live_figures)
        self.metrics_server = MetricsServer.optional(
            config.consumer_id,
            self.metrics.registry,
            port=metrics_port,
            host=metrics_host,
            checks={
                "broker": self.consumer.connected_event.is_set,
                "database": database_check(self.db.connection),
            },
        )
        self._housekeeping = housekeeping
        self._stats_interval_s = stats_interval_s
        self._housekeeping_interval_s = housekeeping_interval_s
        self._draining = threading.Event()  # stop taking new batches once the pending ones are written
        self._abort = threading.Event()  # stop retrying a batch the database refuses to take (no ack)
        self._ticker_stop = threading.Event()
        self.threads = Threads(config.consumer_id)
        self._writer_threads: list[threading.Thread] = []
        self.stopped = threading.Event()

    def _new_batcher(self) -> Batcher[Any]:
        c = self.config
        return Batcher(
            consumer=c.consumer_id,
            max_messages=c.batch_max_messages,
            max_delay_s=c.batch_max_delay_s,
            late_horizon=self.horizon,
        )

    # -- threads ----------------------------------------------------------------------------------------
    @property
    def writer_failures(self) -> int:
        """Failed write attempts (transient errors) of every writer since start."""
        return sum(w.failures for w in self.writers)

    def _write_loop(self, writer: BatchWriter) -> None:
        """One writer thread: takes whole batches (the handoff gives each to one taker), writes each on its
        own connection and acks it after its COMMIT. Another writer may commit a later batch first: acks,
        receipts and marks do not depend on the order of commits (marks.py)."""
        while True:
            batch = self.handoff.take(self._draining)
            if batch is None:
                if self._draining.is_set():
                    return
                continue
            result = writer.write(batch, stop=self._abort)
            if result is None:
                log.warning(
                    "stopping with %d uncommitted messages: not acked, the broker keeps them", batch.messages
                )
                return
            if self.feed is None:
                self.consumer.ack(batch.acks)
            elif not self.feed.submit(
                fed_pairs(batch.accepted, result.refused), batch.acks, abort=self._abort
            ):
                log.warning(
                    "stopping with %d committed messages not fed to the alert engine: not acked, the "
                    "broker keeps them",
                    batch.messages,
                )
                return
            self.stats.record(result)
            quarantined = Tally(str(row[3]) for row in batch.quarantine)
            if result.refused:
                quarantined[Reason.OUT_OF_RANGE.value] += len(result.refused)
            self.metrics.batch(
                messages=result.messages,
                stored=len(batch.accepted) - len(result.refused),
                samples=result.samples,
                quarantined=quarantined,
                commit_s=result.commit_s,
                attempts=result.attempts,
                first_at=batch.first_at,
                newest=newest_ts(batch.accepted),
                now=utc_now(),
            )

    def _live_figures(self) -> dict[str, float]:
        with self.stats.lock:
            sent, failed = self.stats.marks_sent, self.stats.marks_failed
        return {
            "pending": self.handoff.pending(),
            "feed_pending": self.feed.pending() if self.feed is not None else 0,
            "redeliveries": self.consumer.redeliveries,
            "marks_sent": sent,
            "marks_failed": failed,
            "connects": self.consumer.connects,
        }

    def _tick_loop(self) -> None:
        next_housekeeping = time.monotonic() + (
            self._housekeeping_interval_s if self._housekeeping else float("inf")
        )
        while not self._ticker_stop.wait(self._stats_interval_s):
            log.info(
                "ingest %s: %s pending=%d", self.config.consumer_id, self.stats.line(), self.handoff.pending()
            )
            if time.monotonic() >= next_housekeeping:
                self.housekeeping()
                next_housekeeping = time.monotonic() + self._housekeeping_interval_s

    def housekeeping(self) -> None:
        """Partition maintenance and pending rollups (cloud.db.maintenance.run_once); failures are logged."""
        from cloud.db.maintenance import run_once

        try:
            with self.db.connection() as conn:
                report = run_once(conn, utc_now())
            log.info("housekeeping: %d partition changes, %s", len(report.changes), report.rollups)
        except (psycopg.Error, RuntimeError) as exc:
            log.warning("housekeeping failed (%s); retried at the next interval", exc)

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.start()
        self._writer_threads = [
            self.threads.spawn(f"ingest-writer-{i}", functools.partial(self._write_loop, w))
            for i, w in enumerate(self.writers)
        ]
        self.threads.spawn("ingest-ticker", self._tick_loop)
        if self.config.commit_marks:
            self.threads.spawn(
                "ingest-marks", lambda: self.marks.loop(self._ticker_stop, self.config.mark_interval_s)
            )
        feed = self.feed
        if feed is not None:
            self.threads.spawn("ingest-feed", lambda: feed.loop(self._feed_stop))
        if self.config.commit_marks or feed is not None:
            self.publisher.start()
        self.consumer.start()
        log.info(
            "ingest %s consuming %s from %s",
            self.config.consumer_id,
            self.consumer.subscription,
            self.consumer.redacted_url,
        )

    def stop(self, grace_s: float = STOP_GRACE_S, *, leave: bool = True) -> None:
        """Stop on purpose. `leave` (the default): leave the consumer group (unsubscribe, the writer
        commits and acks what it holds, then the session ends), so that the broker stops handing this
        member its turn; if that cannot finish within grace_s (database down) the session is kept.
        Without `leave`: flush, commit and ack what is pending, and disconnect keeping the session."""
        left = self.consumer.leave(timeout_s=grace_s) if leave else False
        self._draining.set()
        deadline = time.monotonic() + (2.0 if leave else grace_s)
        for writer in self._writer_threads:  # every writer commits and acks what it took, or is aborted
            writer.join(max(0.0, deadline - time.monotonic()))
        if any(w.is_alive() for w in self._writer_threads):
            self._abort.set()
            for writer in self._writer_threads:
                writer.join()
        if self.feed is not None and not self.feed.wait_empty(grace_s if not self._abort.is_set() else 0.0):
            log.warning(
                "%d committed batches not fed to the alert engine: not acked, the broker keeps them",
                self.feed.pending(),
            )
        self._feed_stop.set()
        self._ticker_stop.set()
        self.threads.join(grace_s)
        self.consumer.stop()
        self.publisher.stop()
        for w in self.writers:
            w.close()
        self.db.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        log.info(
            "ingest %s stopped (%s): %s",
            self.config.consumer_id,
            "left the group" if left else "session kept",
            self.stats.line(),
        )
        self.stopped.set()

    def run(self, stop: threading.Event | None = None) -> None:
        """Run until SIGTERM/SIGINT (or `stop`), then stop cleanly. Call from the main thread."""
        stop = stop or threading.Event()

        def handle(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: stopping", signum)
            stop.set()

        previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            # wake now and then: a signal the kernel delivered to another thread runs its handler only
            # when the main thread runs Python (seen: a SIGTERM right after SIGCONT left it waiting)
            while not stop.wait(1.0):
                pass
        finally:
            self.stop()
            for s, h in previous.items():
                signal.signal(s, h)
