"""The engine's set-based writes (cloud/alerts/bulk.py) against a real PostgreSQL: several decisions of
one episode in one batch keep their order, and a row the database refuses costs only its own device."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cloud.alerts import bulk
from cloud.alerts.config import AlertConfig
from cloud.alerts.decision import Action, AlertDecision
from cloud.alerts.engine import Engine
from cloud.alerts.params import RuleId, Severity
from cloud.db.migrate import migrate
from contract.messages import DeviceEvent, EventType
from tests.cloud.test_alerts_engine_support import session, wire

NOON = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)


def decision(dev: str, sev: Severity, action: Action = Action.RAISE, key: str = "s1") -> AlertDecision:
    return AlertDecision(
        rule_id=RuleId.T8,
        severity=sev,
        device_id=dev,
        episode_key=key,
        message=f"{action} {sev.name}",
        notice_text="n",
        evidence={"k": 1},
        action=action,
    )


def test_waves_keep_each_episode_in_order_and_never_twice_in_a_wave() -> None:
    a1, a2, a3 = (decision("a", s) for s in (Severity.WARNING, Severity.ALERT, Severity.CRITICAL))
    b1 = decision("b", Severity.WARNING)
    c1 = decision("a", Severity.WARNING, key="s2")
    assert bulk.waves([a1, b1, a2, c1, a3]) == [[a1, b1, c1], [a2], [a3]]
    assert bulk.waves([]) == []


@pytest.fixture
def dsn(database_url: str) -> str:
    migrate(database_url)
    return database_url


def test_raise_escalate_and_clear_of_one_episode_in_one_batch(dsn: str) -> None:
    ds = [
        decision("dev-a", Severity.WARNING),
        decision("dev-b", Severity.WARNING),
        decision("dev-a", Severity.CRITICAL),
        decision("dev-a", Severity.WARNING, Action.CLEAR),
        decision("dev-c", Severity.WARNING, Action.CLEAR),  # nothing open: no row, no audit
    ]
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        applied, audits = bulk.apply_decisions(conn, ds, {}, NOON)
        rows = conn.execute(
            "select device_id, severity::text, state, count from alerts order by device_id"
        ).fetchall()
    assert rows == [("dev-a", "critical", "resolved", 2), ("dev-b", "warning", "open", 1)]
    assert [(a.decision.device_id, a.opened, a.resolved) for a in applied] == [
        ("dev-a", True, False),
        ("dev-b", True, False),
        ("dev-a", False, False),
        ("dev-a", False, True),
    ]
    assert [(x["f"], x["t"]) for x in audits] == [(None, "open"), (None, "open"), ("open", "resolved")]


def test_a_row_the_database_refuses_skips_only_its_device(dsn: str) -> None:
    """PostgreSQL's jsonb refuses a NUL character that the contract lets through in an event's detail:
    that message is refused (recorded in alert_refused), the rest of the device and the other device
    are written."""
    good = session("good", "s-good", NOON, 0)[:2]  # start + samples: a live session state
    bad = session("bad", "s-bad", NOON, 0)[:2]
    nul = DeviceEvent(
        device_id="bad",
        seq=10,
        ts=NOON + timedelta(seconds=10),
        event=EventType.LEVEL_CHANGE,
        at=NOON + timedelta(seconds=10),
        session_id="s-bad",
        level_from=2,
        level_to=3,
        detail="knob\x00",
    )
    engine = Engine(AlertConfig(database_url=dsn, mqtt_url="mqtt://127.0.0.1:1"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        result = engine.process(conn, [wire(m) for m in (*good, *bad, nul)], NOON + timedelta(minutes=1))
        states = conn.execute("select device_id from alert_session_state order by 1").fetchall()
    assert [r.reason for r in result.refused] == ["unstorable"]
    assert states == [("bad",), ("good",)]
