"""The sweep of sliding rules on PostgreSQL, fed by the real engine: a streak of daily use opens O5; with
no further session, the sweep resolves it once a whole rest day has passed (by rule, audited, webhook
queued), sweeps each device once per interval, and leaves a device that is still in its run alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cloud.alerts.config import AlertConfig
from cloud.alerts.engine import Engine
from cloud.alerts.sweep import sweep
from cloud.db.migrate import migrate
from tests.cloud.test_alerts_engine_support import session, wire

MONDAY = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)
D = timedelta(days=1)


@pytest.fixture
def dsn(database_url: str) -> str:
    migrate(database_url)
    return database_url


def open_o5(conn: psycopg.Connection, dev: str) -> list[str]:  # type: ignore[type-arg]
    rows = conn.execute(
        "select episode_key from alerts where device_id = %s and rule_id = 'O5' and state <> 'resolved' "
        "order by 1",
        (dev,),
    ).fetchall()
    return [r[0] for r in rows]


def test_a_rest_day_resolves_the_streak_without_a_new_session(dsn: str) -> None:
    cfg = AlertConfig(database_url=dsn, mqtt_url="mqtt://127.0.0.1:1", webhook_url="http://127.0.0.1:1/hook")
    engine = Engine(cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for dev in ("rester", "user"):
            for i in range(7):  # seven days in a row (the home streak limit is lower)
                start = MONDAY + i * D
                engine.process(conn, [wire(m) for m in session(dev, f"s{i}", start, 10 * i)], start + D / 2)
        last = MONDAY + 6 * D
        # "user" goes on using the device the next day, "rester" does not
        engine.process(conn, [wire(m) for m in session("user", "s7", last + D, 70)], last + D + D / 2)
        assert open_o5(conn, "rester") == ["rolling", "streak-from-2024-05-06"]
        assert "streak-from-2024-05-06" in open_o5(conn, "user")

        assert sweep(conn, cfg, last + D + D / 2) == (2, [])  # the day after: the run may still go on
        assert sweep(conn, cfg, last + D + D / 2 + timedelta(minutes=5)) == (0, [])  # swept this interval

        # a whole day without use has passed (one device per transaction: the pages cover both)
        devices, cleared = sweep(conn, cfg, last + 2 * D + D / 2, page=1)
        assert devices == 2
        assert [(a.decision.device_id, a.decision.episode_key) for a in cleared] == [
            ("rester", "streak-from-2024-05-06")
        ]
        assert open_o5(conn, "rester") == ["rolling"]  # 6 of the last 7 days were still days of use
        assert "streak-from-2024-05-06" in open_o5(conn, "user")  # still in its run: untouched
        audit = conn.execute(
            "select t.from_state, t.to_state, t.actor from alert_transitions t join alerts a on a.id = t.alert_id "
            "where a.device_id = 'rester' and a.episode_key like 'streak%%' order by t.id"
        ).fetchall()
        assert audit == [(None, "open", "rule"), ("open", "resolved", "rule")]
        resolved_by = conn.execute(
            "select resolved_by from alerts where device_id = 'rester' and episode_key like 'streak%%'"
        ).fetchone()
        assert resolved_by == ("rule",)
        hooks = conn.execute("select count(*) from webhook_deliveries").fetchone()
        assert hooks is not None and hooks[0] >= 3  # the two opens of each device and the resolution

        devices, cleared = sweep(conn, cfg, last + 5 * D)  # the week slides past: the frequency clears too
        assert ("rester", "rolling") in [(a.decision.device_id, a.decision.episode_key) for a in cleared]
        assert open_o5(conn, "rester") == []
