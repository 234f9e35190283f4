"""The platform-health panels read from Prometheus: each service's own /metrics (cloud/runtime/metrics.py,
cloud/ingest/metrics.py, cloud/alerts/metrics.py, cloud/ota/metrics.py, the API's cloud/api/metrics.py),
scraped by docker-compose's Prometheus (deploy/prometheus/prometheus.yml). Live figures of the processes,
where the SQL panels show what the database holds."""

from __future__ import annotations

from cloud.dashboards.spec import PanelSpec, Viz


def _p(
    title: str, viz: Viz, description: str, *promql: tuple[str, str], unit: str = "", width: int = 8
) -> PanelSpec:
    return PanelSpec(title, "", viz, (), description, unit=unit, width=width, height=7, promql=promql)


RATE = "[$__rate_interval]"

PANELS: tuple[PanelSpec, ...] = (
    _p(
        "Services ready",
        Viz.STAT,
        "1 when every readiness check of the service's replicas passes (broker connected, database reachable).",
        ("min by (job, check) (microfleet_ready)", "{{job}} {{check}}"),
    ),
    _p(
        "Ingest: messages per second",
        Viz.TIMESERIES,
        "Committed and acknowledged by the ingest processes (stored, and quarantined by reason).",
        (f"sum(rate(microfleet_ingest_stored_total{RATE}))", "stored"),
        (f"sum by (reason) (rate(microfleet_ingest_quarantined_total{RATE}))", "quarantined {{reason}}"),
        (f"sum(rate(microfleet_ingest_redeliveries_total{RATE}))", "redelivered"),
        width=16,
    ),
    _p(
        "Ingest: commit latency and lag (p95)",
        Viz.TIMESERIES,
        "A batch's transaction; first message received to commit; device timestamp to commit (lag).",
        (
            f"histogram_quantile(0.95, sum by (le) (rate(microfleet_ingest_commit_seconds_bucket{RATE})))",
            "commit",
        ),
        (
            "histogram_quantile(0.95, sum by (le) "
            f"(rate(microfleet_ingest_receive_to_commit_seconds_bucket{RATE})))",
            "receive to commit",
        ),
        (
            f"histogram_quantile(0.95, sum by (le) (rate(microfleet_ingest_commit_lag_seconds_bucket{RATE})))",
            "publish to commit",
        ),
        unit="s",
        width=12,
    ),
    _p(
        "Ingest: batches, backlog and commit marks",
        Viz.TIMESERIES,
        "Mean messages per batch, messages received and not yet committed, commit marks sent and failed.",
        (
            f"sum(rate(microfleet_ingest_batch_messages_sum{RATE})) / "
            f"sum(rate(microfleet_ingest_batch_messages_count{RATE}))",
            "messages per batch",
        ),
        ("sum(microfleet_ingest_pending_messages)", "pending"),
        (f"sum(rate(microfleet_ingest_commit_marks_sent_total{RATE}))", "marks sent/s"),
        (f"sum(rate(microfleet_ingest_commit_marks_failed_total{RATE}))", "marks failed/s"),
        width=12,
    ),
    _p(
        "Alert engine",
        Viz.TIMESERIES,
        "Messages evaluated, refused by reason, notices the broker routed to devices and refused.",
        (f"sum(rate(microfleet_alerts_evaluated_total{RATE}))", "evaluated/s"),
        (f"sum by (reason) (rate(microfleet_alerts_refused_total{RATE}))", "refused {{reason}}"),
        (f"sum(rate(microfleet_alerts_notices_sent_total{RATE}))", "notices sent/s"),
        (f"sum(rate(microfleet_alerts_notices_refused_total{RATE}))", "notices refused/s"),
        width=12,
    ),
    _p(
        "Rollout progress and protocol pushes",
        Viz.TIMESERIES,
        "Device jobs of each active rollout by state (OTA service); protocol downlinks sent through the API.",
        ("sum by (rollout, state) (microfleet_ota_rollout_jobs)", "rollout {{rollout}} {{state}}"),
        (
            "sum by (outcome) (increase(microfleet_protocol_pushes_total[1h]))",
            "protocol pushes {{outcome}} /h",
        ),
        width=12,
    ),
)
