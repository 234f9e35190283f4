"""Safety dashboard, alert panels (cloud/alerts, migration 0100_alerts.sql): alerts raised by rule and
severity, the alerts open now and the oldest of them, and how long operators take to acknowledge."""

from __future__ import annotations

from cloud.dashboards.spec import Col, PanelSpec, Viz, device_filter, local_day

# Alerts of devices the variables select. A LEFT JOIN: with every variable on All an alert counts even
# when its device row is missing (the alert engine does not wait for ingest to create it).
ON_ALERTS = device_filter("d.model", "d.fw_version", "d.protocol_id")
ALERTS = "FROM alerts a LEFT JOIN devices d ON d.device_id = a.device_id"
UNRESOLVED = "a.state <> 'resolved'"  # open, acknowledged or snoozed
SEVERITIES = ("critical", "alert", "warning", "info")  # the alert_severity enum, highest first


def _per_severity(condition: str = "") -> str:
    extra = f" AND {condition}" if condition else ""
    return ",\n       ".join(f"count(*) FILTER (WHERE a.severity = '{s}'{extra}) AS {s}" for s in SEVERITIES)


ALERTS_PER_DAY = f"""
SELECT {local_day("a.first_seen")} AS time, a.rule_id AS rule, a.severity::text AS severity,
       count(*) AS alerts
{ALERTS}
WHERE $__timeFilter(a.first_seen) AND {ON_ALERTS}
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""

ALERTS_BY_RULE = f"""
SELECT a.rule_id AS rule,
       {_per_severity()}
{ALERTS}
WHERE $__timeFilter(a.first_seen) AND {ON_ALERTS}
GROUP BY a.rule_id
ORDER BY count(*) DESC, a.rule_id
"""

OPEN_ALERTS = f"""
SELECT {_per_severity()},
       count(*) FILTER (WHERE a.state = 'open') AS unacknowledged
{ALERTS}
WHERE {UNRESOLVED} AND {ON_ALERTS}
"""

OLDEST_OPEN = f"""
SELECT a.id AS alert_id, a.device_id, coalesce(d.model, '') AS model, a.rule_id AS rule,
       a.severity::text AS severity, a.state, CASE WHEN a.blocking THEN 'yes' ELSE 'no' END AS blocking,
       a.count AS raises, a.first_seen, a.last_seen,
       round((extract(epoch FROM now() - a.first_seen) / 3600)::numeric, 1) AS age_hours, a.message
{ALERTS}
WHERE {UNRESOLVED} AND {ON_ALERTS}
ORDER BY a.first_seen, a.id
LIMIT 50
"""

# From raise to the first acknowledgement in the audit trail: alerts.acknowledged_at holds the latest
# one (an escalation reopens an acknowledged alert, and it is acknowledged again).
TIME_TO_ACK = f"""
WITH raised AS (
    SELECT extract(epoch FROM (SELECT min(t.at) FROM alert_transitions t
                               WHERE t.alert_id = a.id AND t.to_state = 'acknowledged') - a.first_seen)
           / 60 AS minutes
    {ALERTS}
    WHERE $__timeFilter(a.first_seen) AND {ON_ALERTS}
)
SELECT count(minutes) AS acknowledged, count(*) - count(minutes) AS never_acknowledged,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY minutes) AS p50_minutes,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY minutes) AS p90_minutes
FROM raised
"""

_SEVERITY_COLUMNS = tuple((s, Col.NUMBER) for s in SEVERITIES)

PANELS = (
    PanelSpec(
        "Open alerts by severity",
        OPEN_ALERTS,
        Viz.STAT,
        (*_SEVERITY_COLUMNS, ("unacknowledged", Col.NUMBER)),
        "Alerts not resolved now (open, acknowledged or snoozed) per severity; unacknowledged: still open.",
        width=12,
        height=5,
    ),
    PanelSpec(
        "Time to acknowledge",
        TIME_TO_ACK,
        Viz.STAT,
        (
            ("acknowledged", Col.NUMBER),
            ("never_acknowledged", Col.NUMBER),
            ("p50_minutes", Col.NUMBER),
            ("p90_minutes", Col.NUMBER),
        ),
        "Alerts raised in the range: minutes from the raise to the first acknowledgement, median and "
        "90th percentile; never acknowledged: resolved by the rule or still waiting.",
        width=12,
        height=5,
    ),
    PanelSpec(
        "Alerts per day by rule and severity",
        ALERTS_PER_DAY,
        Viz.TIMESERIES,
        (("time", Col.TIME), ("rule", Col.TEXT), ("severity", Col.TEXT), ("alerts", Col.NUMBER)),
        "Alerts raised per local day (time zone variable), one series per rule and severity "
        "(DOMAIN §6: O overuse, T tolerance, C contraindication).",
        width=16,
    ),
    PanelSpec(
        "Alerts by rule in range",
        ALERTS_BY_RULE,
        Viz.BARCHART,
        (("rule", Col.TEXT), *_SEVERITY_COLUMNS),
        "Alerts raised in the range per rule, stacked by severity.",
        stacked=True,
    ),
    PanelSpec(
        "Oldest open alerts",
        OLDEST_OPEN,
        Viz.TABLE,
        (
            ("alert_id", Col.NUMBER),
            ("device_id", Col.TEXT),
            ("model", Col.TEXT),
            ("rule", Col.TEXT),
            ("severity", Col.TEXT),
            ("state", Col.TEXT),
            ("blocking", Col.TEXT),
            ("raises", Col.NUMBER),
            ("first_seen", Col.TIME),
            ("last_seen", Col.TIME),
            ("age_hours", Col.NUMBER),
            ("message", Col.TEXT),
        ),
        "The 50 oldest alerts not resolved, whatever the range; blocking: sessions and protocol pushes "
        "held on the device (C1). Act with `microfleet alerts ack|resolve ID --by NAME`.",
        width=24,
        height=10,
    ),
)
