"""Prometheus metrics of one alert engine process: counters per committed batch (never per message), and
the engine's, the delivery worker's and the consumer's own counters read at scrape time.

    microfleet_alerts_messages_total               messages in committed batches (evaluated or refused)
    microfleet_alerts_evaluated_total              messages folded through the rules
    microfleet_alerts_refused_total{reason}        messages not evaluated, by reason (alert_refused)
    microfleet_alerts_decisions_total              rule decisions
    microfleet_alerts_raised_total                 alert changes applied (raised, re-raised, cleared)
    microfleet_alerts_batch_messages               histogram: messages per batch
    microfleet_alerts_batch_seconds                histogram: a batch's evaluation and commit
    microfleet_alerts_batch_retries_total          batches retried after a database error
    microfleet_alerts_pending_messages             received, not yet evaluated (gauge)
    microfleet_alerts_notices_sent_total / _refused_total   notices the broker routed / did not (again later)
    microfleet_alerts_gates_sent_total / _refused_total     safety gates likewise
    microfleet_alerts_redeliveries_total, microfleet_mqtt_connects_total
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2000, 4000)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class Live:
    pending: int
    evaluated: int
    refused: Mapping[str, int]
    notices_sent: int
    notices_refused: int
    gates_sent: int
    gates_refused: int
    redeliveries: int
    connects: int


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], Live]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        v = self.read()
        yield GaugeMetricFamily(
            "microfleet_alerts_pending_messages", "Received, not yet evaluated", value=v.pending
        )
        yield CounterMetricFamily(
            "microfleet_alerts_evaluated", "Messages folded through the rules", value=v.evaluated
        )
        refused = CounterMetricFamily(
            "microfleet_alerts_refused", "Messages not evaluated, by reason", labels=["reason"]
        )
        for reason, n in sorted(v.refused.items()):
            refused.add_metric([reason], n)
        yield refused
        pairs = (
            ("notices_sent", "Notices the broker routed to the device", v.notices_sent),
            ("notices_refused", "Notices not delivered (tried again)", v.notices_refused),
            ("gates_sent", "Safety gates the broker took", v.gates_sent),
            ("gates_refused", "Safety gates not taken (tried again)", v.gates_refused),
            ("redeliveries", "Messages the broker sent again (MQTT DUP flag)", v.redeliveries),
        )
        for name, doc, n in pairs:
            yield CounterMetricFamily(f"microfleet_alerts_{name}", doc, value=n)
        yield CounterMetricFamily(
            "microfleet_mqtt_connects", "Connections of the consumer to the broker", value=v.connects
        )


class AlertMetrics:
    def __init__(self, read_live: Callable[[], Live]) -> None:
        self.registry = r = CollectorRegistry()
        self.messages = Counter("microfleet_alerts_messages", "Messages in committed batches", registry=r)
        self.decisions = Counter("microfleet_alerts_decisions", "Rule decisions", registry=r)
        self.applied = Counter("microfleet_alerts_raised", "Alert changes applied", registry=r)
        self.batch_messages = Histogram(
            "microfleet_alerts_batch_messages", "Messages per batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "microfleet_alerts_batch_seconds",
            "A batch's evaluation and commit",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "microfleet_alerts_batch_retries", "Batches retried after a database error", registry=r
        )
        r.register(_LiveCollector(read_live))

    def batch(self, *, messages: int, decisions: int, applied: int, seconds: float) -> None:
        self.messages.inc(messages)
        self.decisions.inc(decisions)
        self.applied.inc(applied)
        self.batch_messages.observe(messages)
        self.batch_seconds.observe(seconds)
