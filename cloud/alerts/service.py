"""Composition root of one alert engine process (`microfleet alerts run`).

Threads, each started and joined here (cloud.runtime.threads: one that dies takes the process down):
paho's network threads (the `alerts` shared-subscription Consumer, or on the NATS tier the JetStream
source's thread on the `alerts` durable: cloud.ingest.source chooses by MICROFLEET_NATS_URL; with
MICROFLEET_ALERT_FEED=committed the same on the alert feed ingest publishes after each commit:
cloud.alerts.feed_source; the downlink Publisher), the engine thread (batches -> one transaction each -> acks after COMMIT), the delivery worker
(notices and gates), the webhook worker (when a URL is set), the profile poller (safety gate) and the
timer (snoozes that expire, orphaned session state, the sweep of sliding rules as days pass). The
in-memory backlog is bounded by the consumer's Receive Maximum: the broker sends no more until we ack.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import psycopg

from cloud.alerts.config import AlertConfig
from cloud.alerts.delivery import BATCH, DeliveryWorker, Publisher
from cloud.alerts.engine import BatchResult, Engine
from cloud.alerts.feed_source import FeedSource
from cloud.alerts.gate import GatePoller
from cloud.alerts.lifecycle import wake_snoozed
from cloud.alerts.metrics import AlertMetrics, Live
from cloud.alerts.sweep import sweep as sweep_rules
from cloud.alerts.webhook import WebhookWorker
from cloud.ingest.feed import EVALUATED
from cloud.ingest.source import Source, UplinkSourceSpec, uplink_source, wanted
from cloud.runtime.db import Database
from cloud.runtime.metrics import MetricsServer, database_check
from cloud.runtime.mqtt import check_version
from cloud.runtime.threads import Threads

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
STALE_SESSION = timedelta(days=1)
RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)
# on stop, every worker is signalled at once and all are joined within this one deadline: a batch commits
# well within it; one that cannot (a stuck database) is left unacknowledged, as after a crash
STOP_S = 3.0
# EVALUATED (cloud.ingest.feed: also what ingest feeds in committed mode) is what the rules read; status
# heartbeats and OTA reports are not evaluated, so the engine does not receive them (1 message in 7 of the
# benchmark's traffic: the broker does not send it, the engine does not decode it)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Inbox:
    """Messages from paho's thread to the engine thread (never blocks paho: bounded by Receive Maximum)."""

    def __init__(self) -> None:
        self._items: list[tuple[str, bytes, Any]] = []
        self._cond = threading.Condition()
        self._first = 0.0
        self._full = 1  # the batch size the taker waits for

    def offer(self, topic: str, payload: bytes, token: Any) -> None:
        with self._cond:
            if not self._items:
                self._first = time.monotonic()
            self._items.append((topic, payload, token))
            # the taker only needs waking for a first item (to time the batch) or a full batch; in
            # between it sleeps until the batch's deadline (a notify per message was 4 % of the engine)
            if len(self._items) in (1, self._full):
                self._cond.notify()

    def take(self, max_items: int, max_delay_s: float, stop: threading.Event) -> list[tuple[str, bytes, Any]]:
        with self._cond:
            self._full = max_items
            end = time.monotonic() + 0.5
            while not stop.is_set():
                now = time.monotonic()
                if len(self._items) >= max_items or (self._items and now >= self._first + max_delay_s):
                    break
                if not self._items and now >= end:
                    return []
                self._cond.wait((self._first + max_delay_s - now) if self._items else end - now)
            out, self._items = self._items[:max_items], self._items[max_items:]
            self._first = time.monotonic()
            return out

    def pending(self) -> int:
        return len(self._items)

    def wake(self) -> None:
        """Wake the taker now (it checks its stop event)."""
        with self._cond:
            self._cond.notify_all()


class AlertService:
    def __init__(
        self,
        cfg: AlertConfig,
        *,
        clock: Clock = utc_now,
        gate: bool = True,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        """metrics_port: serve /metrics, /healthz and /readyz there (0: any free port; None: no server)."""
        self.cfg, self.clock = cfg, clock
        self.engine = Engine(cfg)
        self.inbox = Inbox()
        spec = UplinkSourceSpec.of(cfg, cfg.group, EVALUATED)
        # on MQTT the broker sends only EVALUATED kinds; a JetStream durable sends every uplink: the rest
        # is acknowledged on arrival (nothing of it is committed) and never decoded
        self.skipped = 0
        self._evaluated = wanted(EVALUATED)
        # committed mode (MICROFLEET_ALERT_FEED): the batches ingest committed, one feed message each,
        # unpacked into the same inbox (cloud.alerts.feed_source); ingest feeds evaluated kinds only
        self.consumer: Source = (
            FeedSource(spec, self.inbox.offer)
            if cfg.feed == "committed"
            else uplink_source(spec, self._offer if spec.on_nats else self.inbox.offer)
        )
        # the one owner of the engine's connections: engine, timer, delivery, gate poller and webhook
        self.db = Database(cfg.database_url, name=cfg.consumer_id, max_size=6)
        self.publisher = Publisher(
            cfg.mqtt_url,
            f"{cfg.consumer_id}-down",
            ca_file=cfg.mqtt_ca_file,
            inflight=BATCH,
            version=check_version(cfg.mqtt_version),
        )
        self.delivery = DeliveryWorker(cfg, self.publisher, clock, self.db)
        # retained gates the broker may have lost in a crash are sent again on every (re)connect
        self.publisher.mqtt.on_up.append(lambda _session_present: self.delivery.resend_gates())
        self.webhook = WebhookWorker(cfg, clock, self.db) if cfg.webhook_url else None
        self.gate = GatePoller(cfg, clock, self.delivery.wake, self.db) if gate else None
        self.on_batch: Callable[[BatchResult], None] | None = None
        self.batches = 0
        self.messages = 0
        self.swept = 0  # devices looked at by the sweep of sliding rules
        self._stop = threading.Event()
        self._threads = Threads(cfg.consumer_id)
        self.metrics = AlertMetrics(self._live_figures)
        self.metrics_server = MetricsServer.optional(
            cfg.consumer_id,
            self.metrics.registry,
            port=metrics_port,
            host=metrics_host,
            checks={
                "broker": lambda: (
                    self.consumer.connected_event.is_set() and self.publisher.connected.is_set()
                ),
                "database": database_check(self.db.connection),
            },
        )

    def _offer(self, topic: str, payload: bytes, token: Any) -> None:
        if self._evaluated(topic):
            self.inbox.offer(topic, payload, token)
        else:
            self.skipped += 1
            self.consumer.ack((token,))

    def _live_figures(self) -> Live:
        d = self.delivery
        return Live(
            pending=self.inbox.pending(),
            evaluated=self.engine.evaluated,
            refused=dict(self.engine.refused),
            notices_sent=d.sent_notices,
            notices_refused=d.failed_notices,
            gates_sent=d.sent_gates,
            gates_refused=d.failed_gates,
            redeliveries=self.consumer.redeliveries,
            connects=self.consumer.connects,
        )

    def start(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.start()
        self.publisher.start()
        self.delivery.start()
        if self.webhook:
            self.webhook.start()
        if self.gate:
            self.gate.start()
        self._threads.spawn("alerts-engine", self._engine_loop)
        self._threads.spawn("alerts-timer", self._timer_loop)
        self.consumer.start()

    def stop(self, *, leave: bool | None = None, timeout_s: float = STOP_S) -> None:
        """Stop taking messages, finish the batch in hand (commit + ack), then stop every worker: all are
        signalled at once and joined within `timeout_s` in all. A batch that cannot commit by then (a
        stuck database) is not acknowledged: the broker keeps it, as after a crash; its thread is named
        in the log and ends with the process.
        `leave` (default: cfg.leave_on_stop): first leave the consumer group (see Consumer.leave)."""
        if self.cfg.leave_on_stop if leave is None else leave:
            self.consumer.leave(timeout_s=15.0)
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        self.inbox.wake()
        workers = [w for w in (self.gate, self.webhook, self.delivery) if w is not None]
        for w in workers:
            w.signal_stop()
        self._threads.join(max(0.0, deadline - time.monotonic()))
        self.consumer.stop()  # after the engine: its last acks go out on this connection
        for w in workers:
            w.join(max(0.0, deadline - time.monotonic()))
        self.publisher.stop()
        self.db.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()

    def __enter__(self) -> AlertService:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def run(self) -> None:
        """Run until SIGTERM/SIGINT."""
        done = threading.Event()

        def handler(_sig: int, _frame: FrameType | None) -> None:
            done.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        with self:
            log.info(
                "alert engine %s running (group %s, broker %s)",
                self.cfg.consumer_id,
                self.cfg.group,
                self.consumer.redacted_url,
            )
            while not done.wait(30):
                log.info("alerts: batches=%d messages=%d", self.batches, self.messages)
            log.info("alert engine %s stopping", self.cfg.consumer_id)

    # -- threads --------------------------------------------------------------------------------------
    def _engine_loop(self) -> None:
        while not self._stop.is_set():
            items = self.inbox.take(self.cfg.batch_max_messages, self.cfg.batch_max_delay_s, self._stop)
            if not items:
                continue
            attempt = 0
            started = time.perf_counter()
            while True:
                try:
                    with self.db.connection(autocommit=True) as conn:
                        result = self.engine.process(conn, [(t, p) for t, p, _ in items], self.clock())
                    break
                except psycopg.Error as exc:
                    delay = RETRY_S[min(attempt, len(RETRY_S) - 1)]
                    attempt += 1
                    self.metrics.retries.inc()
                    log.warning(
                        "alert batch of %d not committed (%s); retry in %.1f s", len(items), exc, delay
                    )
                    if self._stop.wait(delay):
                        log.warning("stopping: %d messages not acked, the broker keeps them", len(items))
                        return
            self.consumer.ack(t for _, _, t in items)
            self.batches += 1
            self.messages += len(items)
            self.metrics.batch(
                messages=len(items),
                decisions=result.decisions,
                applied=len(result.applied),
                seconds=time.perf_counter() - started,
            )
            if result.notices:
                self.delivery.wake()
            if self.webhook and result.applied:
                self.webhook.wake()
            if self.on_batch:
                self.on_batch(result)

    def _timer_loop(self) -> None:
        # how often to look for devices due a sweep (each device is swept once per sweep_s at most)
        sweep_every = min(60.0, self.cfg.sweep_s / 4)
        next_sweep = time.monotonic()
        while not self._stop.wait(self.cfg.timer_s):
            try:
                with self.db.connection(autocommit=True) as conn:
                    due = time.monotonic() >= next_sweep
                    self._timer_round(conn, sweep=due)
                if due:
                    next_sweep = time.monotonic() + sweep_every
            except psycopg.Error as exc:
                log.warning("alert timer failed (%s); retrying", exc)

    def _timer_round(self, conn: psycopg.Connection[Any], *, sweep: bool) -> None:
        now = self.clock()
        with conn.transaction():
            woken = wake_snoozed(conn, now)
            conn.execute("delete from alert_session_state where updated_at < %s", (now - STALE_SESSION,))
        if woken:
            log.info("snooze expired for alerts %s", woken)
        if sweep:
            devices, cleared = sweep_rules(conn, self.cfg, now)
            self.swept += devices
            if cleared:
                log.info("sweep of %d devices resolved %d sliding-rule alerts", devices, len(cleared))
                if self.webhook:
                    self.webhook.wake()
