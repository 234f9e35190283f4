"""Fleet overview: devices online, sessions today, active devices (users), firmware, protocols, models."""

from __future__ import annotations

from dataclasses import replace

from cloud.dashboards.spec import Col, DashboardSpec, PanelSpec, Viz, device_filter, local_day
from cloud.dashboards.usage import ROLLUP_LAG
from cloud.dashboards.variables import STANDARD

ON_DEVICES = device_filter("d.model", "d.fw_version", "d.protocol_id")
ON_SESSIONS = device_filter("d.model", "s.fw_version", "s.protocol_id")

DEVICES = f"""
SELECT count(*) AS devices,
       count(*) FILTER (WHERE d.state = 'online') AS online,
       count(*) FILTER (WHERE d.last_seen < now() - interval '24 hours') AS silent_24h
FROM devices d
WHERE {ON_DEVICES}
"""

SESSIONS_TODAY = f"""
SELECT count(*) AS sessions_today, count(DISTINCT s.device_id) AS devices_today
FROM sessions s JOIN devices d ON d.device_id = s.device_id
WHERE s.started_at >= {local_day("now()")} AND {ON_SESSIONS}
"""

# Active users: one user per home device, so devices with use on the days of the range (daily rollup).
ACTIVE_DEVICES = f"""
SELECT count(DISTINCT u.device_id) AS active_devices
FROM usage_device_daily u JOIN devices d ON d.device_id = u.device_id
WHERE u.bucket > $__timeFrom()::timestamptz - interval '1 day' AND u.bucket < $__timeTo()
  AND {ON_DEVICES}
"""

ACTIVE_DEVICES_HOURLY = f"""
SELECT u.bucket AS time, count(DISTINCT u.device_id) AS active_devices
FROM usage_device_hourly u JOIN devices d ON d.device_id = u.device_id
WHERE $__timeFilter(u.bucket) AND {ON_DEVICES}
GROUP BY u.bucket
ORDER BY 1
"""

FIRMWARE = f"""
SELECT coalesce(nullif(d.fw_version, ''), 'unknown') AS firmware, count(*) AS devices
FROM devices d
WHERE {ON_DEVICES}
GROUP BY 1
ORDER BY 2 DESC, 1
"""

PROTOCOLS = f"""
SELECT coalesce(nullif(d.protocol_id, ''), 'none') || ' v' || coalesce(d.protocol_version, 0) AS protocol,
       count(*) AS devices
FROM devices d
WHERE {ON_DEVICES}
GROUP BY 1
ORDER BY 2 DESC, 1
"""

MODELS = f"""
SELECT coalesce(nullif(d.model, ''), 'unknown') AS model, count(*) AS devices
FROM devices d
WHERE {ON_DEVICES}
GROUP BY 1
ORDER BY 2 DESC, 1
"""

DASHBOARD = DashboardSpec(
    uid="mf-fleet",
    title="microfleet / Fleet overview",
    description="Devices online, sessions today, active devices, firmware and protocol versions.",
    time_from="now-24h",
    variables=STANDARD,
    panels=(
        PanelSpec(
            "Devices",
            DEVICES,
            Viz.STAT,
            (("devices", Col.NUMBER), ("online", Col.NUMBER), ("silent_24h", Col.NUMBER)),
            "Known devices, devices online now (birth/last will), devices not seen for 24 hours.",
        ),
        PanelSpec(
            "Sessions today",
            SESSIONS_TODAY,
            Viz.STAT,
            (("sessions_today", Col.NUMBER), ("devices_today", Col.NUMBER)),
            "Sessions started since midnight in the selected time zone, and the devices that ran them.",
        ),
        PanelSpec(
            "Active devices (users) in range",
            ACTIVE_DEVICES,
            Viz.STAT,
            (("active_devices", Col.NUMBER),),
            "Devices with stimulation on the UTC days of the range (daily usage rollup).",
        ),
        PanelSpec(
            "Active devices per hour",
            ACTIVE_DEVICES_HOURLY,
            Viz.TIMESERIES,
            (("time", Col.TIME), ("active_devices", Col.NUMBER)),
            "Devices with samples in each hour (hourly usage rollup; its lag is beside).",
            width=16,
        ),
        replace(ROLLUP_LAG, width=8, height=8),
        PanelSpec("Firmware versions", FIRMWARE, Viz.PIE, (("firmware", Col.TEXT), ("devices", Col.NUMBER))),
        PanelSpec("Protocol versions", PROTOCOLS, Viz.PIE, (("protocol", Col.TEXT), ("devices", Col.NUMBER))),
        PanelSpec("Models", MODELS, Viz.PIE, (("model", Col.TEXT), ("devices", Col.NUMBER))),
    ),
)
