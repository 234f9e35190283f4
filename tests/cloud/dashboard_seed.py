"""Seed rows for the alert (Safety) and rollout (OTA) panels of tests/cloud/test_dashboards_sql.py, and
what those panels must say about them. Times are relative to the test module's NOW."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

DAY, HOUR, MINUTE = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)
FIRST_SEEN = 60 * DAY  # before NOW, for the devices of the main seed


def ota_devices(now: datetime) -> list[tuple[Any, ...]]:
    """Home devices without sessions, targets of the rollout (same columns as DEVICES + first_seen)."""
    return [
        (dev, "mf-home-1", "1.3.2", "starter", 2, "offline", now - HOUR, 0, 0, now - since)
        for dev, since in (("dev-d", FIRST_SEEN), ("dev-e", FIRST_SEEN), ("dev-f", 2 * DAY))
    ]


# device, rule, severity, state, raised (before NOW), raises, blocking, acks and resolution (minutes
# after the raise). The O2 alert was acknowledged, escalated (reopened) and acknowledged again: time to
# acknowledge counts the first acknowledgement. The last one was raised before the 30-day range.
ALERTS = [
    ("dev-a", "O1", "warning", "resolved", 2 * DAY, 1, False, (10,), 60),
    ("dev-b", "T5", "info", "open", 3 * DAY, 3, False, (), None),
    ("dev-c", "T7", "critical", "acknowledged", 5 * HOUR, 1, True, (4,), None),
    ("dev-c", "O2", "alert", "snoozed", 1 * DAY, 2, False, (30, 120), None),
    ("dev-a", "O1", "warning", "resolved", 40 * DAY, 1, False, (100,), 200),
]

ROLLOUT_ID, OTHER_ROLLOUT_ID = 41, 42
# job, rollout, device, wave, state, reason, retryable, fw before, fw after, sent (before NOW), last report
JOBS = [
    ("j41-a", 41, "dev-a", 0, "succeeded", None, None, "1.3.2", "1.4.0", 3 * DAY + 2 * HOUR, 3 * DAY),
    ("j41-b", 41, "dev-b", 1, "rolled_back", "health check failed", False, "1.3.2", "1.3.2", 2 * DAY, 47 * HOUR),
    ("j41-d", 41, "dev-d", 1, "failed", "signature does not verify", False, "1.3.2", "1.3.2", 2 * DAY, 47 * HOUR),
    ("j41-e", 41, "dev-e", 1, "downloading", None, None, "1.3.2", "1.3.2", 2 * DAY, HOUR),
    ("j41-f", 41, "dev-f", 2, "pending", None, None, None, None, None, None),
    ("j42-c", 42, "dev-c", 0, "succeeded", None, None, "2.0.0", "2.0.1", 11 * DAY, 10 * DAY),
]  # fmt: skip


def seed_alerts(conn: psycopg.Connection[Any], now: datetime) -> None:
    for dev, rule, severity, state, ago, raises, blocking, acks, resolved in ALERTS:
        raised = now - ago
        acked = raised + acks[-1] * MINUTE if acks else None
        row = conn.execute(
            "INSERT INTO alerts (device_id, rule_id, episode_key, severity, state, blocking, count, first_seen,"
            " last_seen, message, notice_text, acknowledged_at, acknowledged_by, resolved_at, resolved_by)"
            " VALUES (%s, %s, %s, %s::alert_severity, %s, %s, %s, %s, %s, %s, '', %s, %s, %s, %s) RETURNING id",
            (
                dev, rule, f"{rule}-{raised:%Y%m%d}", severity, state, blocking, raises, raised,
                raised + 30 * MINUTE, f"{rule} on {dev}", acked, "ops" if acks else None,
                raised + resolved * MINUTE if resolved else None, "rule" if resolved else None,
            ),
        ).fetchone()  # fmt: skip
        assert row is not None
        steps: list[tuple[str | None, str, datetime, str]] = [(None, "open", raised, "rule")]
        for i, minutes in enumerate(acks):
            if i:
                steps.append(("acknowledged", "open", raised + (minutes - 1) * MINUTE, "rule"))  # escalated
            steps.append(("open", "acknowledged", raised + minutes * MINUTE, "ops"))
        if state == "snoozed":
            steps.append(("acknowledged", "snoozed", now - MINUTE, "ops"))
        if resolved:
            steps.append((steps[-1][1], "resolved", raised + resolved * MINUTE, "rule"))
        for from_state, to_state, at, actor in steps:
            conn.execute(
                "INSERT INTO alert_transitions (alert_id, from_state, to_state, severity, at, actor, reason)"
                " VALUES (%s, %s, %s, %s::alert_severity, %s, %s, 'seed')",
                (row[0], from_state, to_state, severity, at, actor),
            )


def seed_ota(conn: psycopg.Connection[Any], now: datetime) -> None:
    for release_id, version, code, model in ((1, "1.4.0", 4, "mf-home-1"), (2, "2.0.1", 7, "mf-pro-1")):
        conn.execute(
            "INSERT INTO firmware_releases (release_id, version, version_code, models, sha256, size, artifact,"
            " min_battery_pct, manifest) VALUES (%s, %s, %s, %s, %s, 1024, %s, 30, '{}')",
            (release_id, version, code, [model], f"{release_id:064x}", f"{version}.bin"),
        )
    for rollout_id, release_id, status, wave, created, updated in (
        (ROLLOUT_ID, 1, "running", 1, 4 * DAY, HOUR),
        (OTHER_ROLLOUT_ID, 2, "completed", 0, 12 * DAY, 10 * DAY),
    ):
        conn.execute(
            "INSERT INTO ota_rollouts (rollout_id, release_id, plan, status, wave, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (rollout_id, release_id, json.dumps({"waves": [1, 50, 100]}), status, wave, now - created, now - updated),
        )  # fmt: skip
    for seq, (job, rollout, dev, wave, state, reason, retryable, before, after, sent, last) in enumerate(
        JOBS
    ):
        sent_at = now - sent if sent else None
        report_ts = now - last if last else None
        conn.execute(
            "INSERT INTO ota_device_jobs (job_id, rollout_id, device_id, wave, state, reason, retryable,"
            " fw_version, sent_at, report_ts, report_seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (job, rollout, dev, wave, state, reason, retryable, after, sent_at, report_ts, 2 * seq + 1),
        )
        if sent_at is None or report_ts is None:
            continue
        for i, (ts, report_state, fw) in enumerate(
            ((sent_at + MINUTE, "queued", before), (report_ts, state, after))
        ):
            conn.execute(
                "INSERT INTO ota_reports (device_id, seq, ts, job_id, rollout_id, state, fw_version,"
                " target_version, reason, retryable) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (dev, 2 * seq + i, ts, job, rollout, report_state, fw, "1.4.0" if rollout == 41 else "2.0.1",
                 reason if i else None, retryable if i else None),
            )  # fmt: skip


def seed(conn: psycopg.Connection[Any], now: datetime) -> None:
    seed_alerts(conn, now)
    seed_ota(conn, now)


def check_alert_panels(results: dict[tuple[str, str], list[tuple[Any, ...]]]) -> None:
    assert tuple(results[("mf-safety", "Open alerts by severity")][0]) == (1, 1, 0, 1, 1)
    ack = results[("mf-safety", "Time to acknowledge")][0]
    # first acknowledgements of the alerts raised in range: 10, 4 and 30 minutes; T5 never
    assert tuple(ack[:2]) == (3, 1) and float(ack[2]) == 10.0 and abs(float(ack[3]) - 26.0) < 1e-6
    oldest = results[("mf-safety", "Oldest open alerts")]
    assert [(r[1], r[3], r[6]) for r in oldest] == [
        ("dev-b", "T5", "no"),
        ("dev-c", "O2", "no"),
        ("dev-c", "T7", "yes"),
    ]
    by_rule = {r[0]: tuple(r[1:]) for r in results[("mf-safety", "Alerts by rule in range")]}
    assert by_rule == {"O1": (0, 0, 1, 0), "O2": (0, 1, 0, 0), "T5": (0, 0, 0, 1), "T7": (1, 0, 0, 0)}
    per_day = results[("mf-safety", "Alerts per day by rule and severity")]
    assert sorted((r[1], r[2], r[3]) for r in per_day) == [
        ("O1", "warning", 1), ("O2", "alert", 1), ("T5", "info", 1), ("T7", "critical", 1)
    ]  # fmt: skip


def check_ota_panels(results: dict[tuple[str, str], list[tuple[Any, ...]]], now: datetime) -> None:
    assert tuple(results[("mf-ota", "Rollout success rate")][0]) == (5, 3, Decimal("33.3"))
    waves = [tuple(r) for r in results[("mf-ota", "Rollout progress per wave")]]
    # pending, sent, deferred, in_progress, succeeded, failed, rolled_back, cancelled
    assert waves == [
        ("wave 0", 0, 0, 0, 0, 1, 0, 0, 0),
        ("wave 1", 0, 0, 0, 1, 0, 1, 1, 0),
        ("wave 2", 1, 0, 0, 0, 0, 0, 0, 0),
    ]
    reasons = {(r[0], r[1]): r[2] for r in results[("mf-ota", "Failure and rollback reasons")]}
    assert reasons == {("failed", "signature does not verify"): 1, ("rolled_back", "health check failed"): 1}
    states = {(r[0], r[1]): r[2] for r in results[("mf-ota", "Jobs per wave and state")]}
    assert sum(states.values()) == 5 and states[(1, "downloading")] == 1
    rollouts = [(r[0], r[1], r[4], r[7]) for r in results[("mf-ota", "Rollouts in range")]]
    assert rollouts == [(42, "2.0.1", 1, Decimal(100)), (41, "1.4.0", 5, Decimal("33.3"))]

    by_day: dict[datetime, dict[str, int]] = {}
    for day, firmware, devices in results[("mf-ota", "Firmware versions over time")]:
        by_day.setdefault(day, {})[firmware] = devices
    days = sorted(by_day)
    now_counts = {fw: n for fw, n in by_day[days[-1]].items() if n}
    assert now_counts == dict(results[("mf-fleet", "Firmware versions")])  # today: devices.fw_version
    # 30 days ago: dev-c still on 2.0.0, dev-a on 1.3.2, dev-f not seen yet
    assert by_day[days[0]] == {"1.3.2": 4, "1.4.0": 0, "2.0.0": 1, "2.0.1": 0}
    update_day = next(d for d in days if d <= now - 3 * DAY < d + DAY)  # dev-a updated, dev-f not seen
    assert by_day[update_day] == {"1.3.2": 3, "1.4.0": 1, "2.0.0": 0, "2.0.1": 1}
    day_before = days[days.index(update_day) - 1]  # the update happened after this day's end
    assert by_day[day_before] == {"1.3.2": 4, "1.4.0": 0, "2.0.0": 0, "2.0.1": 1}
