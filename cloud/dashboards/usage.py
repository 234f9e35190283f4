"""Usage: sessions and minutes per day, levels, zones, protocols, end reasons, session length."""

from __future__ import annotations

from cloud.dashboards.spec import Col, DashboardSpec, PanelSpec, Viz, device_filter, local_day
from cloud.dashboards.variables import STANDARD

ON_DEVICES = device_filter("d.model", "d.fw_version", "d.protocol_id")
ON_SESSIONS = device_filter("d.model", "s.fw_version", "s.protocol_id")
SESSIONS_IN_RANGE = f"""FROM sessions s JOIN devices d ON d.device_id = s.device_id
WHERE $__timeFilter(s.started_at) AND {ON_SESSIONS}"""
DAY = local_day("s.started_at")

SESSIONS_PER_DAY = f"""
SELECT {DAY} AS time, count(*) AS sessions, count(DISTINCT s.device_id) AS devices
{SESSIONS_IN_RANGE}
GROUP BY 1
ORDER BY 1
"""

# Minutes with current flowing and skin contact, from the hourly rollup re-bucketed into local days.
MINUTES_PER_DAY = f"""
SELECT {local_day("u.bucket")} AS time,
       sum(u.active_s) / 60.0 AS active_minutes,
       sum(u.active_s) / 60.0 / nullif(count(DISTINCT u.device_id), 0) AS minutes_per_device
FROM usage_device_hourly u JOIN devices d ON d.device_id = u.device_id
WHERE $__timeFilter(u.bucket) AND {ON_DEVICES}
GROUP BY 1
ORDER BY 1
"""

LEVELS = f"""
SELECT 'level ' || s.level_max AS level, count(*) AS sessions
{SESSIONS_IN_RANGE} AND s.level_max IS NOT NULL
GROUP BY s.level_max
ORDER BY s.level_max
"""

ZONES = f"""
SELECT z.zone, sum(z.dwell_s) / 60.0 AS minutes, count(DISTINCT s.device_id) AS devices
FROM sessions s JOIN devices d ON d.device_id = s.device_id
CROSS JOIN LATERAL jsonb_to_recordset(
    CASE WHEN jsonb_typeof(s.zones) = 'array' THEN s.zones ELSE '[]'::jsonb END
) AS z(zone text, dwell_s double precision)
WHERE $__timeFilter(s.started_at) AND {ON_SESSIONS}
GROUP BY z.zone
ORDER BY 2 DESC
"""

PROTOCOLS_PER_DAY = f"""
SELECT {DAY} AS time,
       coalesce(nullif(s.protocol_id, ''), 'none') || ' v' || coalesce(s.protocol_version, 0) AS protocol,
       count(*) AS sessions
{SESSIONS_IN_RANGE}
GROUP BY 1, 2
ORDER BY 1, 2
"""

END_REASONS = f"""
SELECT coalesce(s.end_reason, 'open') AS end_reason, count(*) AS sessions
{SESSIONS_IN_RANGE}
GROUP BY 1
ORDER BY 2 DESC, 1
"""

SESSION_LENGTH = f"""
SELECT {DAY} AS time,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY s.duration_active_s) / 60 AS median_minutes,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY s.duration_active_s) / 60 AS p95_minutes
{SESSIONS_IN_RANGE} AND s.duration_active_s IS NOT NULL
GROUP BY 1
ORDER BY 1
"""

# How far the rollups trail the samples (migration 0007: usage_fresh_as_of): every sample stored before
# now - lag is counted in the panels that read usage_* ; null: unknown (TimescaleDB before its first refresh).
ROLLUP_LAG_SQL = """
SELECT extract(epoch FROM now() - usage_fresh_as_of('hour'))::float8 AS hourly_rollup_lag,
       extract(epoch FROM now() - usage_fresh_as_of('day'))::float8 AS daily_rollup_lag
"""
ROLLUP_LAG = PanelSpec(
    "Usage rollups lag",
    ROLLUP_LAG_SQL,
    Viz.STAT,
    (("hourly_rollup_lag", Col.NUMBER), ("daily_rollup_lag", Col.NUMBER)),
    "How far the hourly and daily usage rollups trail the stored samples: panels built on them (active "
    "minutes, active devices) count every sample stored before now minus this. Refreshed every few minutes "
    "(ingest housekeeping on plain PostgreSQL; TimescaleDB refresh policies, which leave the current hour "
    "or day). Empty: unknown yet. Session panels read the sessions table and are current.",
    unit="s",
    width=24,
    height=4,
)

DASHBOARD = DashboardSpec(
    uid="mf-usage",
    title="microfleet / Usage",
    description="How the fleet is used: sessions and minutes per day, levels, zones, protocols.",
    time_from="now-30d",
    refresh="5m",
    variables=STANDARD,
    panels=(
        ROLLUP_LAG,
        PanelSpec(
            "Sessions per day",
            SESSIONS_PER_DAY,
            Viz.TIMESERIES,
            (("time", Col.TIME), ("sessions", Col.NUMBER), ("devices", Col.NUMBER)),
            "Sessions started per local day (time zone variable) and the devices that ran them.",
            width=12,
        ),
        PanelSpec(
            "Active minutes per day",
            MINUTES_PER_DAY,
            Viz.TIMESERIES,
            (("time", Col.TIME), ("active_minutes", Col.NUMBER), ("minutes_per_device", Col.NUMBER)),
            "Minutes with current and skin contact (hourly rollup), fleet total and per active device.",
            unit="m",
            width=12,
        ),
        PanelSpec(
            "Highest level per session",
            LEVELS,
            Viz.BARCHART,
            (("level", Col.TEXT), ("sessions", Col.NUMBER)),
        ),
        PanelSpec(
            "Time by zone",
            ZONES,
            Viz.BARCHART,
            (("zone", Col.TEXT), ("minutes", Col.NUMBER), ("devices", Col.NUMBER)),
            "Dwell minutes per facial zone from the session summaries.",
        ),
        PanelSpec(
            "Session end reasons",
            END_REASONS,
            Viz.PIE,
            (("end_reason", Col.TEXT), ("sessions", Col.NUMBER)),
            "'open' is a session whose end has not arrived (yet).",
        ),
        PanelSpec(
            "Sessions per protocol",
            PROTOCOLS_PER_DAY,
            Viz.TIMESERIES,
            (("time", Col.TIME), ("protocol", Col.TEXT), ("sessions", Col.NUMBER)),
            "Sessions per day by treatment protocol and version (the protocol phase a device runs).",
            width=12,
        ),
        PanelSpec(
            "Session length",
            SESSION_LENGTH,
            Viz.TIMESERIES,
            (("time", Col.TIME), ("median_minutes", Col.NUMBER), ("p95_minutes", Col.NUMBER)),
            "Active minutes per session, median and 95th percentile per day.",
            unit="m",
            width=12,
        ),
    ),
)
