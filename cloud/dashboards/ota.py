"""OTA: firmware in the fleet now and over time. Rollout progress per wave and state and failure
reasons wait for the OTA tables of issue 4: see deploy/grafana/README.md."""

from __future__ import annotations

from cloud.dashboards.spec import Col, DashboardSpec, PanelSpec, Viz, device_filter, local_day
from cloud.dashboards.variables import STANDARD

ON_DEVICES = device_filter("d.model", "d.fw_version", "d.protocol_id")
ON_SESSIONS = device_filter("d.model", "s.fw_version", "s.protocol_id")

# The firmware each device reported in its sessions: versions over time without a history table.
FIRMWARE_OVER_TIME = f"""
SELECT {local_day("s.started_at")} AS time,
       coalesce(nullif(s.fw_version, ''), 'unknown') AS firmware,
       count(DISTINCT s.device_id) AS devices
FROM sessions s JOIN devices d ON d.device_id = s.device_id
WHERE $__timeFilter(s.started_at) AND {ON_SESSIONS}
GROUP BY 1, 2
ORDER BY 1, 2
"""

FIRMWARE_SHARE = f"""
SELECT coalesce(nullif(d.fw_version, ''), 'unknown') AS firmware,
       round(100.0 * count(*) / sum(count(*)) OVER (), 1) AS share_pct
FROM devices d
WHERE {ON_DEVICES}
GROUP BY 1
ORDER BY 2 DESC, 1
"""

FIRMWARE_BY_MODEL = f"""
SELECT coalesce(nullif(d.model, ''), 'unknown') AS model,
       coalesce(nullif(d.fw_version, ''), 'unknown') AS firmware,
       count(*) AS devices,
       count(*) FILTER (WHERE d.state = 'online') AS online,
       max(d.last_seen) AS last_seen
FROM devices d
WHERE {ON_DEVICES}
GROUP BY 1, 2
ORDER BY 1, 3 DESC, 2
"""

DASHBOARD = DashboardSpec(
    uid="mf-ota",
    title="microfleet / OTA",
    description="Firmware versions in the fleet and over time (rollout panels follow with issue 4).",
    time_from="now-30d",
    refresh="5m",
    variables=STANDARD,
    panels=(
        PanelSpec(
            "Firmware share",
            FIRMWARE_SHARE,
            Viz.BARGAUGE,
            (("firmware", Col.TEXT), ("share_pct", Col.NUMBER)),
            "Share of known devices per reported firmware version.",
            unit="percent",
        ),
        PanelSpec(
            "Firmware versions over time",
            FIRMWARE_OVER_TIME,
            Viz.TIMESERIES,
            (("time", Col.TIME), ("firmware", Col.TEXT), ("devices", Col.NUMBER)),
            "Devices per firmware version per day, as reported in their sessions.",
            width=16,
        ),
        PanelSpec(
            "Firmware by model",
            FIRMWARE_BY_MODEL,
            Viz.TABLE,
            (
                ("model", Col.TEXT),
                ("firmware", Col.TEXT),
                ("devices", Col.NUMBER),
                ("online", Col.NUMBER),
                ("last_seen", Col.TIME),
            ),
            width=24,
        ),
    ),
)
