"""OTA: firmware in the fleet now and over time, and the rollouts (cloud/dashboards/rollout_panels.py:
the `rollout` variable, progress per wave and state, failure and rollback reasons, success rate)."""

from __future__ import annotations

from cloud.dashboards import rollout_panels
from cloud.dashboards.spec import Col, DashboardSpec, PanelSpec, Viz, device_filter, local_day
from cloud.dashboards.variables import STANDARD

ON_DEVICES = device_filter("d.model", "d.fw_version", "d.protocol_id")
ON_SESSIONS = device_filter("d.model", "s.fw_version", "s.protocol_id")

# Devices per firmware version at the end of each local day of the range (today: now). There is no
# history of devices.fw_version, so it is rebuilt backwards from its current counts: a device counts
# from the day it was first seen, and each OTA update that succeeded after a day's end is undone for that
# day (the device still ran the version of its job's first report). The last point equals the counts of
# devices.fw_version; firmware changed outside OTA (factory, service bench) moves at today's point only.
# Every part is aggregated per version and day before the days are joined, so the cost does not grow
# with the fleet beyond one pass over devices and the updates of the range.
FIRMWARE_OVER_TIME = f"""
WITH days AS (
    SELECT day AT TIME ZONE '$tz' AS day_start, (day + interval '1 day') AT TIME ZONE '$tz' AS day_end
    FROM generate_series(date_trunc('day', $__timeFrom()::timestamptz AT TIME ZONE '$tz'),
                         $__timeTo()::timestamptz AT TIME ZONE '$tz', interval '1 day') AS day
),
fleet AS (
    SELECT d.device_id, coalesce(nullif(d.fw_version, ''), 'unknown') AS firmware,
           {local_day("d.first_seen")} AS since
    FROM devices d
    WHERE {device_filter("d.model", None, "d.protocol_id")}
),
updates AS (
    SELECT f.since, {local_day("coalesce(j.report_ts, j.updated_at)")} AS on_day,
           coalesce(nullif(first_report.fw_version, ''), 'unknown') AS before,
           coalesce(nullif(j.fw_version, ''), rel.version) AS after
    FROM ota_device_jobs j
    JOIN fleet f ON f.device_id = j.device_id
    JOIN ota_rollouts r ON r.rollout_id = j.rollout_id
    JOIN firmware_releases rel ON rel.release_id = r.release_id
    LEFT JOIN LATERAL (
        SELECT o.fw_version FROM ota_reports o WHERE o.job_id = j.job_id ORDER BY o.ts, o.seq LIMIT 1
    ) first_report ON true
    WHERE j.state = 'succeeded' AND coalesce(j.report_ts, j.updated_at) >= $__timeFrom()
),
changes AS (
    SELECT firmware, since, NULL::timestamptz AS undone_after, count(*) AS devices FROM fleet GROUP BY 1, 2
    UNION ALL
    SELECT after, since, on_day, -count(*) FROM updates WHERE before <> after GROUP BY 1, 2, 3
    UNION ALL
    SELECT before, since, on_day, count(*) FROM updates WHERE before <> after GROUP BY 1, 2, 3
)
SELECT days.day_start AS time, c.firmware,
       coalesce(sum(c.devices) FILTER (
           WHERE c.since < days.day_end AND (c.undone_after IS NULL OR c.undone_after >= days.day_end)
       ), 0)::bigint AS devices
FROM days CROSS JOIN changes c
WHERE ('__all' IN ($firmware) OR c.firmware IN ($firmware))
GROUP BY 1, 2
ORDER BY 1, 2
"""

# The firmware each device reported in its sessions per day.
FIRMWARE_IN_SESSIONS = f"""
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
    description="Firmware versions in the fleet and over time; rollout progress, failures and success rate.",
    time_from="now-30d",
    refresh="5m",
    variables=(*STANDARD, rollout_panels.ROLLOUT),
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
            "Devices per firmware version at the end of each local day: today's counts of the devices "
            "table, earlier days rebuilt by undoing the OTA updates that succeeded since.",
            width=16,
        ),
        *rollout_panels.PANELS,
        PanelSpec(
            "Firmware reported in sessions",
            FIRMWARE_IN_SESSIONS,
            Viz.TIMESERIES,
            (("time", Col.TIME), ("firmware", Col.TEXT), ("devices", Col.NUMBER)),
            "Devices per firmware version per local day, as reported in the sessions they ran.",
            width=24,
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
