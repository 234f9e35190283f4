"""Safety: the alerts (by rule and severity, open now, time to acknowledge; cloud/dashboards/alert_panels.py),
then the telemetry behind some rules from the session summaries: contact problems (DOMAIN §6 T5), long
sessions (O1) and the hardware envelope (T7)."""

from __future__ import annotations

from cloud.dashboards import alert_panels
from cloud.dashboards.spec import Col, DashboardSpec, PanelSpec, Viz, device_filter, local_day
from cloud.dashboards.variables import STANDARD

POOR_CONTACT_RATIO = 0.8  # contact_ok_ratio below this: electrode peeling or moving off the skin
DRY_SKIN_OHM = 50_000  # median impedance above this: dry skin or no gel (T5)
SPIKES_PER_SESSION = 3  # impedance spikes per session (T5)
LONG_SESSION_S = 20 * 60  # active time above the 20-minute auto-off (O1)
HARD_LIMIT_UA = 1000  # above 1 mA on any model (T7)

ON_SESSIONS = device_filter("d.model", "s.fw_version", "s.protocol_id")
SESSIONS_IN_RANGE = f"""FROM sessions s JOIN devices d ON d.device_id = s.device_id
WHERE $__timeFilter(s.started_at) AND s.ended_at IS NOT NULL AND {ON_SESSIONS}"""
POOR_CONTACT = f"s.contact_ok_ratio < {POOR_CONTACT_RATIO}"
DRY_SKIN = f"s.impedance_ohm_median > {DRY_SKIN_OHM}"
SPIKY = f"s.impedance_spikes >= {SPIKES_PER_SESSION}"

CONTACT_PER_DAY = f"""
SELECT {local_day("s.started_at")} AS time,
       count(*) FILTER (WHERE {POOR_CONTACT}) AS poor_contact,
       count(*) FILTER (WHERE {DRY_SKIN}) AS dry_skin,
       count(*) FILTER (WHERE {SPIKY}) AS impedance_spikes
{SESSIONS_IN_RANGE}
GROUP BY 1
ORDER BY 1
"""

CONTACT_DEVICES = f"""
SELECT s.device_id, coalesce(d.model, '') AS model, count(*) AS sessions,
       count(*) FILTER (WHERE {POOR_CONTACT}) AS poor_contact,
       count(*) FILTER (WHERE {DRY_SKIN}) AS dry_skin,
       coalesce(sum(s.impedance_spikes), 0) AS impedance_spikes,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY s.impedance_ohm_median) / 1000 AS median_kohm,
       max(s.started_at) AS last_session
{SESSIONS_IN_RANGE}
GROUP BY s.device_id, d.model
HAVING count(*) FILTER (WHERE {POOR_CONTACT} OR {DRY_SKIN} OR {SPIKY}) > 0
ORDER BY 4 DESC, 5 DESC, 6 DESC, 1
LIMIT 50
"""

ENVELOPE_PER_DAY = f"""
SELECT {local_day("s.started_at")} AS time,
       count(*) FILTER (WHERE s.duration_active_s > {LONG_SESSION_S}) AS over_20_min,
       count(*) FILTER (WHERE s.charging_during_output) AS charging_during_output,
       count(*) FILTER (WHERE s.current_ua_max > {HARD_LIMIT_UA}) AS over_1_ma
{SESSIONS_IN_RANGE}
GROUP BY 1
ORDER BY 1
"""

ENVELOPE_TOTALS = f"""
SELECT count(*) FILTER (WHERE s.duration_active_s > {LONG_SESSION_S}) AS over_20_min,
       count(*) FILTER (WHERE s.charging_during_output) AS charging_during_output,
       count(*) FILTER (WHERE s.current_ua_max > {HARD_LIMIT_UA}) AS over_1_ma
{SESSIONS_IN_RANGE}
"""

DASHBOARD = DashboardSpec(
    uid="mf-safety",
    title="microfleet / Safety",
    description="Alerts by rule and severity, open alerts, time to acknowledge; contact problems, long "
    "sessions and the hardware envelope from session summaries.",
    time_from="now-7d",
    refresh="5m",
    variables=STANDARD,
    panels=(
        *alert_panels.PANELS,
        PanelSpec(
            "Envelope breaches in range",
            ENVELOPE_TOTALS,
            Viz.STAT,
            (("over_20_min", Col.NUMBER), ("charging_during_output", Col.NUMBER), ("over_1_ma", Col.NUMBER)),
            "Sessions over 20 active minutes (O1), with output while charging or above 1 mA (T7).",
            width=24,
            height=5,
        ),
        PanelSpec(
            "Contact problems per day",
            CONTACT_PER_DAY,
            Viz.TIMESERIES,
            (
                ("time", Col.TIME),
                ("poor_contact", Col.NUMBER),
                ("dry_skin", Col.NUMBER),
                ("impedance_spikes", Col.NUMBER),
            ),
            f"Sessions with contact below {POOR_CONTACT_RATIO:.0%} of the time, median impedance above "
            f"{DRY_SKIN_OHM // 1000} kΩ (dry skin, no gel) or {SPIKES_PER_SESSION}+ impedance spikes (T5).",
            width=12,
        ),
        PanelSpec(
            "Envelope breaches per day",
            ENVELOPE_PER_DAY,
            Viz.TIMESERIES,
            (
                ("time", Col.TIME),
                ("over_20_min", Col.NUMBER),
                ("charging_during_output", Col.NUMBER),
                ("over_1_ma", Col.NUMBER),
            ),
            width=12,
        ),
        PanelSpec(
            "Devices with contact problems",
            CONTACT_DEVICES,
            Viz.TABLE,
            (
                ("device_id", Col.TEXT),
                ("model", Col.TEXT),
                ("sessions", Col.NUMBER),
                ("poor_contact", Col.NUMBER),
                ("dry_skin", Col.NUMBER),
                ("impedance_spikes", Col.NUMBER),
                ("median_kohm", Col.NUMBER),
                ("last_session", Col.TIME),
            ),
            "Worst 50 devices in the range: candidates for a gel reminder or an electrode check.",
            width=24,
            height=10,
        ),
    ),
)
