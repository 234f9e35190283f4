"""Platform health: ingest rate and lag, consumers, sequence gaps, quarantine by reason, and the outbox
backlog that devices report in their status (SQL); then the services' live metrics (Prometheus: prom.py)."""

from __future__ import annotations

from cloud.dashboards import prom
from cloud.dashboards.spec import Col, DashboardSpec, PanelSpec, Viz, device_filter
from cloud.dashboards.variables import STANDARD

ON_DEVICES = device_filter("d.model", "d.fw_version", "d.protocol_id")

# uplink_log is partitioned by sent_at, but ingest is about stored_at. Nothing older than the late
# horizon is ever stored (at least the outbox's 14 days + 2; on plain PostgreSQL up to uplink_log's 30-day
# retention: cloud/ingest/batcher.late_horizon_for), so this bound on sent_at lets the planner skip every
# older partition or chunk while the filter on stored_at selects the range.
STORED_IN_RANGE = "$__timeFilter(u.stored_at) AND u.sent_at > $__timeFrom()::timestamptz - interval '31 days'"
LAG_S = "extract(epoch FROM u.stored_at - u.sent_at)"

INGEST_RATE = f"""
SELECT $__timeGroupAlias(u.stored_at, '1m'), u.kind, count(*) AS messages
FROM uplink_log u
WHERE {STORED_IN_RANGE}
GROUP BY 1, 2
ORDER BY 1, 2
"""

# From the device creating a message to its commit: includes the time spent in an offline outbox.
INGEST_LAG = f"""
SELECT $__timeGroupAlias(u.stored_at, '1m'),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY {LAG_S}) AS p50_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY {LAG_S}) AS p95_s,
       max({LAG_S}) AS max_s
FROM uplink_log u
WHERE {STORED_IN_RANGE}
GROUP BY 1
ORDER BY 1
"""

CONSUMERS = f"""
SELECT coalesce(nullif(u.consumer, ''), 'unknown') AS consumer, count(*) AS messages
FROM uplink_log u
WHERE {STORED_IN_RANGE}
GROUP BY 1
ORDER BY 1
"""

# The per-device seq has no holes unless a message was lost (or dropped by a full edge outbox, which
# the device counts in outbox_dropped).
SEQ_GAPS = """
SELECT coalesce(sum(g.missing), 0) AS missing_messages,
       count(*) FILTER (WHERE g.missing > 0) AS devices_with_gaps
FROM (
    SELECT u.device_id, max(u.seq) - min(u.seq) + 1 - count(*) AS missing
    FROM uplink_log u
    WHERE $__timeFilter(u.sent_at)
    GROUP BY u.device_id
) g
"""

QUARANTINE_BY_REASON = """
SELECT $__timeGroupAlias(q.received_at, '5m'), q.reason, count(*) AS messages
FROM quarantine q
WHERE $__timeFilter(q.received_at)
GROUP BY 1, 2
ORDER BY 1, 2
"""

QUARANTINE_LATEST = """
SELECT q.received_at, q.reason, q.topic, left(q.detail, 200) AS detail,
       octet_length(q.payload) AS bytes, coalesce(q.consumer, '') AS consumer
FROM quarantine q
WHERE $__timeFilter(q.received_at)
ORDER BY q.received_at DESC
LIMIT 50
"""

OUTBOX = f"""
SELECT coalesce(sum(d.outbox_depth), 0) AS queued_messages,
       coalesce(max(d.outbox_depth), 0) AS max_per_device,
       count(*) FILTER (WHERE d.outbox_depth > 0) AS devices_with_backlog,
       coalesce(sum(d.outbox_dropped), 0) AS dropped_total
FROM devices d
WHERE {ON_DEVICES}
"""

OUTBOX_DEVICES = f"""
SELECT d.device_id, coalesce(d.model, '') AS model, coalesce(d.fw_version, '') AS firmware,
       coalesce(d.state, '') AS state, d.outbox_depth, d.outbox_dropped, d.last_seen
FROM devices d
WHERE (d.outbox_depth > 0 OR d.outbox_dropped > 0) AND {ON_DEVICES}
ORDER BY d.outbox_depth DESC NULLS LAST, d.outbox_dropped DESC NULLS LAST, d.device_id
LIMIT 20
"""

DASHBOARD = DashboardSpec(
    uid="mf-platform",
    title="microfleet / Platform health",
    description=(
        "Ingest rate and lag, quarantine by reason, sequence gaps, outbox backlog on devices; and the "
        "services' live metrics from Prometheus (readiness, throughput, latency, alerts, rollouts)."
    ),
    time_from="now-1h",
    refresh="30s",
    variables=STANDARD,
    panels=(
        PanelSpec(
            "Outbox backlog reported by devices",
            OUTBOX,
            Viz.STAT,
            (
                ("queued_messages", Col.NUMBER),
                ("max_per_device", Col.NUMBER),
                ("devices_with_backlog", Col.NUMBER),
                ("dropped_total", Col.NUMBER),
            ),
            "From each device's last status: messages waiting in its outbox, and dropped by its overflow policy.",
            width=16,
            height=5,
        ),
        PanelSpec(
            "Sequence gaps in range",
            SEQ_GAPS,
            Viz.STAT,
            (("missing_messages", Col.NUMBER), ("devices_with_gaps", Col.NUMBER)),
            "Holes in the per-device seq of messages sent in the range: lost, dropped at the edge, or late.",
            height=5,
        ),
        PanelSpec(
            "Ingest rate",
            INGEST_RATE,
            Viz.TIMESERIES,
            (("time", Col.TIME), ("kind", Col.TEXT), ("messages", Col.NUMBER)),
            "Messages committed per minute, by kind.",
            width=12,
        ),
        PanelSpec(
            "Ingest lag",
            INGEST_LAG,
            Viz.TIMESERIES,
            (("time", Col.TIME), ("p50_s", Col.NUMBER), ("p95_s", Col.NUMBER), ("max_s", Col.NUMBER)),
            "From the device creating a message to its commit; includes time in an offline device's outbox.",
            unit="s",
            width=12,
        ),
        PanelSpec(
            "Quarantine by reason",
            QUARANTINE_BY_REASON,
            Viz.TIMESERIES,
            (("time", Col.TIME), ("reason", Col.TEXT), ("messages", Col.NUMBER)),
            "Rejected messages per 5 minutes; raw bytes are kept and can be replayed.",
            width=16,
        ),
        PanelSpec(
            "Messages per consumer",
            CONSUMERS,
            Viz.PIE,
            (("consumer", Col.TEXT), ("messages", Col.NUMBER)),
            "How the shared subscription spreads the load over ingest processes.",
        ),
        PanelSpec(
            "Latest quarantined messages",
            QUARANTINE_LATEST,
            Viz.TABLE,
            (
                ("received_at", Col.TIME),
                ("reason", Col.TEXT),
                ("topic", Col.TEXT),
                ("detail", Col.TEXT),
                ("bytes", Col.NUMBER),
                ("consumer", Col.TEXT),
            ),
            width=24,
        ),
        PanelSpec(
            "Devices with an outbox backlog",
            OUTBOX_DEVICES,
            Viz.TABLE,
            (
                ("device_id", Col.TEXT),
                ("model", Col.TEXT),
                ("firmware", Col.TEXT),
                ("state", Col.TEXT),
                ("outbox_depth", Col.NUMBER),
                ("outbox_dropped", Col.NUMBER),
                ("last_seen", Col.TIME),
            ),
            width=24,
        ),
        *prom.PANELS,
    ),
)
