"""OTA dashboard, rollout panels (cloud/ota, migration 0500_ota.sql): the `rollout` variable, progress of
the chosen rollout per wave and state, its failure and rollback reasons, and the rollouts of the range
with their success rate."""

from __future__ import annotations

from cloud.dashboards.spec import Col, PanelSpec, VariableSpec, Viz, device_filter

# Newest first: the dashboard opens on the latest rollout. __text/__value: Grafana shows the text.
ROLLOUT_QUERY = (
    "SELECT r.rollout_id::text AS __value,"
    " '#' || r.rollout_id || ' ' || f.version || ' (' || r.status || ')' AS __text"
    " FROM ota_rollouts r JOIN firmware_releases f ON f.release_id = r.release_id"
    " ORDER BY r.rollout_id DESC"
)
ROLLOUT = VariableSpec(name="rollout", label="Rollout", query=ROLLOUT_QUERY, multi=False)
THE_ROLLOUT = "j.rollout_id = nullif('$rollout', '')::bigint"  # no rollout yet: no rows, no error

# Model and protocol of the job's device. Not the firmware variable: a device's current firmware is what
# the rollout changes, so filtering jobs on it would hide the devices that succeeded.
ON_JOB_DEVICES = device_filter("d.model", None, "d.protocol_id")
JOBS = "ota_device_jobs j LEFT JOIN devices d ON d.device_id = j.device_id"

# Job states (0500_ota.sql): the cloud's own, then what the device reported.
IN_PROGRESS = ("queued", "downloading", "verifying", "installing", "rebooting", "health_check")
FINISHED = ("succeeded", "failed", "rolled_back")  # cancelled is neither a success nor a failure
STATE_COLUMNS = ("pending", "sent", "deferred", "in_progress", *FINISHED, "cancelled")


def _state_counts() -> str:
    def condition(column: str) -> str:
        states = IN_PROGRESS if column == "in_progress" else (column,)
        return "j.state IN (" + ", ".join(f"'{s}'" for s in states) + ")"

    return ",\n       ".join(f"count(*) FILTER (WHERE {condition(c)}) AS {c}" for c in STATE_COLUMNS)


def _in(states: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{s}'" for s in states) + ")"


SUCCESS_PCT = (
    f"round(100.0 * count(*) FILTER (WHERE j.state = 'succeeded')"
    f" / nullif(count(*) FILTER (WHERE j.state IN {_in(FINISHED)}), 0), 1)"
)

PROGRESS_PER_WAVE = f"""
SELECT 'wave ' || j.wave AS wave,
       {_state_counts()}
FROM {JOBS}
WHERE {THE_ROLLOUT} AND {ON_JOB_DEVICES}
GROUP BY j.wave
ORDER BY j.wave
"""

JOBS_PER_WAVE_AND_STATE = f"""
SELECT j.wave, j.state, count(*) AS jobs, max(coalesce(j.report_ts, j.sent_at, j.updated_at)) AS last_change
FROM {JOBS}
WHERE {THE_ROLLOUT} AND {ON_JOB_DEVICES}
GROUP BY j.wave, j.state
ORDER BY j.wave, count(*) DESC, j.state
"""

ROLLOUT_SUCCESS = f"""
SELECT count(*) AS targets,
       count(*) FILTER (WHERE j.state IN {_in(FINISHED)}) AS finished,
       {SUCCESS_PCT} AS success_pct
FROM {JOBS}
WHERE {THE_ROLLOUT} AND {ON_JOB_DEVICES}
"""

FAILURE_REASONS = f"""
SELECT j.state AS outcome, coalesce(nullif(j.reason, ''), '(no reason reported)') AS reason,
       count(*) AS jobs, count(*) FILTER (WHERE j.retryable) AS retryable,
       max(coalesce(j.report_ts, j.updated_at)) AS last_report
FROM {JOBS}
WHERE {THE_ROLLOUT} AND j.state IN ('failed', 'rolled_back') AND {ON_JOB_DEVICES}
GROUP BY 1, 2
ORDER BY 3 DESC, 1, 2
"""

# Rollouts that were alive during the range (created before its end, last changed after its start).
ROLLOUTS_IN_RANGE = f"""
SELECT r.rollout_id, f.version, r.status, r.wave AS current_wave, count(j.job_id) AS targets,
       count(*) FILTER (WHERE j.state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE j.state IN ('failed', 'rolled_back')) AS failed_or_rolled_back,
       {SUCCESS_PCT} AS success_pct,
       r.created_at, r.updated_at
FROM ota_rollouts r JOIN firmware_releases f ON f.release_id = r.release_id
LEFT JOIN ({JOBS}) ON j.rollout_id = r.rollout_id AND {ON_JOB_DEVICES}
WHERE r.created_at <= $__timeTo() AND r.updated_at >= $__timeFrom()
GROUP BY r.rollout_id, f.version
ORDER BY r.rollout_id DESC
"""

PANELS = (
    PanelSpec(
        "Rollout success rate",
        ROLLOUT_SUCCESS,
        Viz.STAT,
        (("targets", Col.NUMBER), ("finished", Col.NUMBER), ("success_pct", Col.NUMBER)),
        "The chosen rollout: devices targeted, jobs finished (succeeded, failed or rolled back) and the "
        "share of those that succeeded (after reboot and health check on the device).",
        width=8,
        height=6,
    ),
    PanelSpec(
        "Rollout progress per wave",
        PROGRESS_PER_WAVE,
        Viz.BARCHART,
        tuple([("wave", Col.TEXT)] + [(c, Col.NUMBER) for c in STATE_COLUMNS]),
        "The chosen rollout's jobs per wave by state; in_progress: queued, downloading, verifying, "
        "installing, rebooting or in the health check. Model and protocol variables apply.",
        width=16,
        height=6,
        stacked=True,
    ),
    PanelSpec(
        "Failure and rollback reasons",
        FAILURE_REASONS,
        Viz.TABLE,
        (
            ("outcome", Col.TEXT),
            ("reason", Col.TEXT),
            ("jobs", Col.NUMBER),
            ("retryable", Col.NUMBER),
            ("last_report", Col.TIME),
        ),
        "Jobs of the chosen rollout that failed or were rolled back, by the reason the device reported.",
        width=12,
    ),
    PanelSpec(
        "Jobs per wave and state",
        JOBS_PER_WAVE_AND_STATE,
        Viz.TABLE,
        (("wave", Col.NUMBER), ("state", Col.TEXT), ("jobs", Col.NUMBER), ("last_change", Col.TIME)),
        "Every job state of the chosen rollout per wave, with the time of its latest report.",
        width=12,
    ),
    PanelSpec(
        "Rollouts in range",
        ROLLOUTS_IN_RANGE,
        Viz.TABLE,
        (
            ("rollout_id", Col.NUMBER),
            ("version", Col.TEXT),
            ("status", Col.TEXT),
            ("current_wave", Col.NUMBER),
            ("targets", Col.NUMBER),
            ("succeeded", Col.NUMBER),
            ("failed_or_rolled_back", Col.NUMBER),
            ("success_pct", Col.NUMBER),
            ("created_at", Col.TIME),
            ("updated_at", Col.TIME),
        ),
        "Rollouts running at some point of the range; success rate over finished jobs (DFU success).",
        width=24,
    ),
)
