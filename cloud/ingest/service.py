"""Composition root of one ingest process: consumer (paho thread) -> handoff -> writer thread -> acks.

Threads, each owned and joined by IngestService: paho's network thread (Consumer), the writer thread
(one transaction per batch, acks after COMMIT) and the ticker (live counters every few seconds, the
database housekeeping job every few minutes). `run()` stops cleanly on SIGTERM/SIGINT: the writer
flushes what is pending, commits and acks it, then the client disconnects (its persistent session
keeps anything that arrived later, for the next start with the same consumer id).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from types import FrameType
from typing import Any

import psycopg

from cloud.config import CloudConfig
from cloud.ingest.batcher import DEFAULT_LATE_HORIZON, Batch, Batcher
from cloud.ingest.consumer import AckToken, Consumer
from cloud.ingest.handoff import Handoff, utc_now
from cloud.ingest.writer import BatchWriter, Strategy, WriteResult

log = logging.getLogger(__name__)

LATE_MARGIN = timedelta(days=1)
STATS_INTERVAL_S = 5.0
HOUSEKEEPING_INTERVAL_S = 300.0
STOP_GRACE_S = 15.0


@dataclass
class Stats:
    messages: int = 0
    samples: int = 0
    quarantined: int = 0
    batches: int = 0
    retries: int = 0
    commit_s_total: float = 0.0
    commit_s_max: float = 0.0
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
                f"commit_ms_max={1000 * self.commit_s_max:.1f}"
            )


def late_horizon_of(dsn: str) -> timedelta:
    """compress_after (storage_policy) minus a margin; the default if the database does not say."""
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute("SELECT min(compress_after) FROM storage_policy").fetchone()
    except psycopg.Error as exc:
        log.warning("late horizon not read from storage_policy (%s); using %s", exc, DEFAULT_LATE_HORIZON)
        return DEFAULT_LATE_HORIZON
    if row is None or row[0] is None:
        return DEFAULT_LATE_HORIZON
    horizon: timedelta = row[0] - LATE_MARGIN
    return horizon


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
    ) -> None:
        self.config = config
        self.stats = Stats()
        self.horizon = late_horizon if late_horizon is not None else late_horizon_of(config.database_url)
        self.handoff: Handoff[AckToken] = Handoff(self._new_batcher())
        self.consumer = Consumer(
            mqtt_url=config.mqtt_url,
            client_id=config.consumer_id,
            group=config.ingest_group,
            on_message=self.handoff.offer,
            receive_maximum=config.receive_maximum,
            session_expiry_s=config.session_expiry_s,
        )
        self.writer = BatchWriter(
            config.database_url, consumer=config.consumer_id, strategy=strategy, isolate=self._isolate
        )
        self._housekeeping = housekeeping
        self._stats_interval_s = stats_interval_s
        self._housekeeping_interval_s = housekeeping_interval_s
        self._draining = threading.Event()  # stop taking new batches once the pending ones are written
        self._abort = threading.Event()  # stop retrying a batch the database refuses to take (no ack)
        self._ticker_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stopped = threading.Event()

    def _new_batcher(self) -> Batcher[AckToken]:
        c = self.config
        return Batcher(
            consumer=c.consumer_id,
            max_messages=c.batch_max_messages,
            max_delay_s=c.batch_max_delay_s,
            late_horizon=self.horizon,
        )

    def _isolate(self, topic: str, payload: bytes) -> Batch[Any]:
        b: Batcher[None] = Batcher(consumer=self.config.consumer_id, late_horizon=self.horizon)
        b.add(topic, payload, None, now=utc_now(), mono=time.monotonic())
        return b.take()

    # -- threads ----------------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            batch = self.handoff.take(self._draining)
            if batch is None:
                if self._draining.is_set():
                    return
                continue
            result = self.writer.write(batch, stop=self._abort)
            if result is None:
                log.warning(
                    "stopping with %d uncommitted messages: not acked, the broker keeps them", batch.messages
                )
                return
            self.consumer.ack(batch.acks)
            self.stats.record(result)

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
            with psycopg.connect(self.config.database_url, connect_timeout=5) as conn:
                report = run_once(conn, utc_now())
            log.info("housekeeping: %d partition changes, %s", len(report.changes), report.rollups)
        except (psycopg.Error, RuntimeError) as exc:
            log.warning("housekeeping failed (%s); retried at the next interval", exc)

    def _spawn(self, name: str, target: Any) -> None:
        t = threading.Thread(target=target, name=f"{name}-{self.config.consumer_id}", daemon=True)
        t.start()
        self._threads.append(t)

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn("ingest-writer", self._write_loop)
        self._spawn("ingest-ticker", self._tick_loop)
        self.consumer.start()
        log.info(
            "ingest %s consuming %s from %s",
            self.config.consumer_id,
            self.consumer.subscription,
            self.config.mqtt_url,
        )

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Flush, commit and ack what is pending, then disconnect. Bounded by grace_s if the DB is down."""
        self._draining.set()
        writer = self._threads[0] if self._threads else None
        if writer is not None:
            writer.join(grace_s)
            if writer.is_alive():
                self._abort.set()
                writer.join()
        self._ticker_stop.set()
        for t in self._threads[1:]:
            t.join()
        self.consumer.stop()
        self.writer.close()
        log.info("ingest %s stopped: %s", self.config.consumer_id, self.stats.line())
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
            stop.wait()
        finally:
            self.stop()
            for s, h in previous.items():
                signal.signal(s, h)
