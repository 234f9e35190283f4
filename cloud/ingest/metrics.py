"""Prometheus metrics of one ingest process, updated once per committed batch (never per message) and
read at scrape time from the live counters (pending, redeliveries, commit marks).

    microfleet_ingest_messages_total              messages committed and acknowledged (stored or quarantined)
    microfleet_ingest_stored_total                of those, stored (a duplicate is absorbed, counted here)
    microfleet_ingest_samples_total               sample rows written
    microfleet_ingest_quarantined_total{reason}   quarantine rows written, by reason (one per distinct
                                                  message of a batch)
    microfleet_ingest_batch_messages              histogram: messages per batch
    microfleet_ingest_commit_seconds              histogram: a batch's transaction, COPY to COMMIT
    microfleet_ingest_receive_to_commit_seconds   histogram: first message of a batch received -> committed
    microfleet_ingest_commit_lag_seconds          histogram and gauge (_last_seconds): commit time - the device's ts
                                                  of the newest message of the batch (publish -> commit)
    microfleet_ingest_batch_retries_total         transactions retried (database errors)
    microfleet_ingest_pending_messages            received, not yet committed (gauge)
    microfleet_ingest_redeliveries_total          messages the broker sent again (MQTT DUP flag)
    microfleet_ingest_commit_marks_sent_total / _failed_total
    microfleet_mqtt_connects_total                connections of the consumer (a reconnect adds one)
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2000, 4000, 8000)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0)


class _Live(Collector):
    """Figures read at scrape time from the objects that keep them (no cost on the hot path)."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        v = self.read()
        yield GaugeMetricFamily(
            "microfleet_ingest_pending_messages", "Received and not yet committed", value=v["pending"]
        )
        yield CounterMetricFamily(
            "microfleet_ingest_redeliveries",
            "Messages the broker sent again (MQTT DUP flag)",
            value=v["redeliveries"],
        )
        yield CounterMetricFamily(
            "microfleet_ingest_commit_marks_sent",
            "CommitMark downlinks the broker took",
            value=v["marks_sent"],
        )
        yield CounterMetricFamily(
            "microfleet_ingest_commit_marks_failed",
            "CommitMark downlinks not taken (sent again)",
            value=v["marks_failed"],
        )
        yield CounterMetricFamily(
            "microfleet_mqtt_connects", "Connections of the consumer to the broker", value=v["connects"]
        )


class IngestMetrics:
    def __init__(self, read_live: Callable[[], dict[str, float]]) -> None:
        self.registry = r = CollectorRegistry()
        self.messages = Counter(
            "microfleet_ingest_messages", "Messages committed and acknowledged", registry=r
        )
        self.stored = Counter("microfleet_ingest_stored", "Messages stored (not quarantined)", registry=r)
        self.samples = Counter("microfleet_ingest_samples", "Sample rows written", registry=r)
        self.quarantined = Counter(
            "microfleet_ingest_quarantined", "Messages quarantined, by reason", ["reason"], registry=r
        )
        self.batch_messages = Histogram(
            "microfleet_ingest_batch_messages", "Messages per batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.commit_seconds = Histogram(
            "microfleet_ingest_commit_seconds",
            "A batch's transaction, COPY to COMMIT",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.receive_to_commit = Histogram(
            "microfleet_ingest_receive_to_commit_seconds",
            "First message of a batch received -> the batch committed",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.lag = Histogram(
            "microfleet_ingest_commit_lag_seconds",
            "Commit time minus the device timestamp of the batch's newest message (publish -> commit)",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.lag_last = Gauge(
            "microfleet_ingest_commit_lag_last_seconds", "The last batch's publish -> commit lag", registry=r
        )
        self.retries = Counter("microfleet_ingest_batch_retries", "Transactions retried", registry=r)
        r.register(_Live(read_live))

    def batch(
        self,
        *,
        messages: int,
        stored: int,
        samples: int,
        quarantined: Tally[str],
        commit_s: float,
        attempts: int,
        first_at: float,
        newest: datetime | None,
        now: datetime,
    ) -> None:
        """One committed batch (first_at: time.monotonic() of its first message)."""
        self.messages.inc(messages)
        self.stored.inc(stored)
        self.samples.inc(samples)
        for reason, n in quarantined.items():
            self.quarantined.labels(reason=reason).inc(n)
        self.batch_messages.observe(messages)
        self.commit_seconds.observe(commit_s)
        if first_at > 0:
            self.receive_to_commit.observe(max(0.0, time.monotonic() - first_at))
        if attempts > 1:
            self.retries.inc(attempts - 1)
        if newest is not None:
            lag = max(0.0, (now - newest).total_seconds())
            self.lag.observe(lag)
            self.lag_last.set(lag)


def newest_ts(accepted: list[tuple[str, bytes, Any]]) -> datetime | None:
    """The newest device timestamp of a batch's accepted messages (None if it has none)."""
    newest: datetime | None = None
    for _, _, m in accepted:
        ts = m.ts
        if newest is None or ts > newest:
            newest = ts
    return newest
