"""No input stops the alert engine (issue 12): a message it cannot evaluate is refused (logged, recorded in
alert_refused with a sanitised reason, acked with the batch) and the rest of the batch is evaluated and
committed. Before: a NUL character in a session id made the device lock's read refuse the whole batch
before the per-device isolation (retried every 5 s forever), a deeply nested document raised
RecursionError out of the engine thread, and a state row the engine could not decode did the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.alerts.config import AlertConfig
from cloud.alerts.engine import Engine
from cloud.alerts.refused import sanitise
from cloud.db.migrate import migrate
from tests.cloud.test_alerts_engine_support import session, wire

NOON = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
LATER = NOON + timedelta(minutes=10)


@pytest.fixture
def dsn(database_url: str) -> str:
    migrate(database_url)
    return database_url


def query(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def run(dsn: str, items: list[tuple[str, bytes]]) -> Any:
    engine = Engine(AlertConfig(database_url=dsn, mqtt_url="mqtt://127.0.0.1:1", consumer_id="t-engine"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        return engine, engine.process(conn, items, LATER)


def good_session(sid: str = "s-good") -> list[tuple[str, bytes]]:
    return [wire(m) for m in session("good", sid, NOON, 0)]


def histories(dsn: str) -> list[tuple[Any, ...]]:
    return query(dsn, "select device_id, session_id from alert_history order by 1, 2")


def test_a_nul_in_a_session_id_is_refused_and_the_rest_of_the_batch_commits(dsn: str) -> None:
    bad = [wire(m) for m in session("bad", "s\x00bad", NOON, 0)]
    engine, result = run(dsn, [*bad, *good_session()])
    assert histories(dsn) == [("good", "s-good")]
    refused = query(dsn, "select topic, payload, reason, detail, consumer from alert_refused order by id")
    assert [(t, bytes(p)) for t, p, *_ in refused] == bad
    assert {r[2] for r in refused} == {"unstorable"}
    assert all("\x00" not in r[3] and "NUL" in r[3] for r in refused)
    assert {r[4] for r in refused} == {"t-engine"}
    assert len(result.refused) == 3 and engine.refused["unstorable"] == 3
    assert engine.evaluated == 3


def test_a_deeply_nested_document_is_refused_not_raised(dsn: str) -> None:
    deep = ("mf/v1/bad/up/samples", b'{"kind":"samples","x":' + b"[" * 5000 + b"]" * 5000 + b"}")
    run(dsn, [deep, *good_session()])
    assert histories(dsn) == [("good", "s-good")]
    [(topic, reason)] = query(dsn, "select topic, reason from alert_refused")
    assert topic == deep[0] and reason in ("not_json", "schema")


def test_every_message_the_contract_refuses_is_recorded_once(dsn: str) -> None:
    items = [("mf/v1/bad/up/samples", b"\xff\x00garbage"), ("mf/v1/bad/up/samples", b"{}")]
    run(dsn, [*items, *items])  # a redelivery in the same batch: recorded once
    run(dsn, items)  # and again later
    assert query(dsn, "select reason from alert_refused order by id") == [("not_json",), ("schema",)]


def test_a_state_the_engine_cannot_read_refuses_that_devices_messages_only(dsn: str) -> None:
    """An unexpected exception (here: a stored session state that no longer decodes) while reading a
    device is isolated to that device's messages, whatever raised it."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "insert into alert_session_state (device_id, session_id, state, updated_at) "
            "values ('bad', 's-bad', '{\"not\": \"a state\"}', %s)",
            (NOON,),
        )
    bad = [wire(m) for m in session("bad", "s-bad", NOON, 0)]
    other = [wire(m) for m in session("bad", "s-bad2", NOON + timedelta(hours=1), 10)]
    engine, result = run(dsn, [*bad, *good_session(), *other])
    assert histories(dsn) == [("bad", "s-bad2"), ("good", "s-good")]
    refused = query(dsn, "select topic, reason, detail from alert_refused order by id")
    assert [(t, r) for t, r, _ in refused] == [(t, "evaluation_failed") for t, _ in bad]
    assert all(d.startswith("ValidationError") for *_, d in refused)
    assert result.failed_devices == 1 and engine.evaluated == 6


@given(st.lists(st.integers(0, 0x10FFFF).map(chr), max_size=600).map("".join))
def test_sanitised_text_is_storable(text: str) -> None:
    out = sanitise(text)
    assert "\x00" not in out and len(out) <= 500
    out.encode()  # no lone surrogate left
    if text.isprintable() and len(text) <= 500 and all(not "\ud800" <= c <= "\udfff" for c in text):
        assert out == text


def test_a_row_the_database_refuses_refuses_only_its_message(dsn: str) -> None:
    """Whatever the database refuses (here a check the test adds to alert_history) is isolated to the
    message that wrote it: the device's other session and the other device commit."""
    with psycopg.connect(dsn) as conn:
        conn.execute("alter table alert_history add constraint no_poison check (session_id <> 'poison')")
    bad = [wire(m) for m in session("bad", "poison", NOON, 0)]
    fine = [wire(m) for m in session("bad", "s-fine", NOON + timedelta(hours=1), 10)]
    engine, result = run(dsn, [*bad, *fine, *good_session()])
    assert histories(dsn) == [("bad", "s-fine"), ("good", "s-good")]
    [(topic, reason, detail)] = query(dsn, "select topic, reason, detail from alert_refused")
    assert (topic, reason) == (bad[2][0], "db_refused")  # the session end writes the history row
    assert detail.startswith("CheckViolation") and "no_poison" in detail
    # the refused session's start and samples committed: its live state waits for an end
    assert query(dsn, "select device_id, session_id from alert_session_state") == [("bad", "poison")]
    assert result.failed_devices == 1 and engine.evaluated == 8
