"""The alert engine end to end on a private mosquitto and a scratch PostgreSQL: an over-user's alert
raised once, delivered, acknowledged and cleared by the rule; two engines at once; quiet hours; the
webhook's retries; the safety gate."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from cloud.alerts.cli import app as alerts_cli
from cloud.alerts.service import AlertService
from cloud.db.migrate import migrate
from tests.cloud.test_alerts_engine_support import (
    Clock,
    FakeDevice,
    Uplinks,
    engine_config,
    overuse_days,
    query,
    session,
    wait_for,
)
from tests.support.services import Mosquitto

pytestmark = pytest.mark.slow
NOON = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def dsn(database_url: str) -> str:
    migrate(database_url)
    return database_url


@pytest.fixture
def uplinks(broker: Mosquitto) -> Iterator[Uplinks]:
    u = Uplinks(broker.url)
    yield u
    u.close()


def alerts_of(dsn: str, device: str) -> list[tuple[object, ...]]:
    return query(
        dsn,
        "select id, rule_id, episode_key, severity::text, state, count, resolved_by from alerts "
        "where device_id = %s order by id",
        device,
    )


def test_overuse_raised_once_delivered_acked_and_cleared(
    broker: Mosquitto, dsn: str, uplinks: Uplinks, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(NOON)
    device = FakeDevice(broker.url, "over-1", clock)
    with AlertService(engine_config(broker.url, dsn), clock=clock, gate=False) as svc:
        assert svc.consumer.subscribed_event.wait(10)
        uplinks.send(overuse_days("over-1", NOON, range(-5, 1)))  # 6 days of use in 7: O5 (limit 5)
        rows = wait_for(lambda: alerts_of(dsn, "over-1"), what="the overuse alert")
        device.wait(lambda d: len(d.notices) == 1)
        assert device.notices[0].rule_id == "O5" and "rest" in device.notices[0].text
        notice_id = device.notices[0].notice_id
        wait_for(
            lambda: query(dsn, "select acked_at from notice_outbox where notice_id = %s", notice_id)[0][0],
            what="the device's NOTICE_ACK recorded",
        )
        [(alert_id, rule, key, sev, state, count, _by)] = alerts_of(dsn, "over-1")
        assert (rule, key, sev, state, count) == ("O5", "rolling", "info", "open", 1)

        # the same sessions again (a device resending its outbox): merged, never a second alert
        uplinks.send(overuse_days("over-1", NOON, range(-1, 1)))
        wait_for(lambda: svc.messages >= 24, what="the resent messages processed")
        assert alerts_of(dsn, "over-1") == rows

        monkeypatch.setenv("MICROFLEET_DATABASE_URL", dsn)
        out = CliRunner().invoke(
            alerts_cli, ["ack", str(alert_id), "--by", "ops-anna", "--reason", "calling"]
        )
        assert out.exit_code == 0, out.output
        listed = CliRunner().invoke(alerts_cli, ["list", "--json"])
        assert json.loads(listed.stdout)[0]["state"] == "acknowledged"

        clock.advance(timedelta(days=4))  # 4 days of use in the last 7: below the limit minus the margin
        uplinks.send(overuse_days("over-1", NOON, range(4, 5)))
        wait_for(lambda: alerts_of(dsn, "over-1")[0][4] == "resolved", what="the rule clears the alert")
        assert alerts_of(dsn, "over-1")[0][6] == "rule"
        audit = query(
            dsn,
            "select from_state, to_state, actor from alert_transitions where alert_id = %s order by id",
            alert_id,
        )
        assert audit == [
            (None, "open", "rule"),
            ("open", "acknowledged", "ops-anna"),
            ("acknowledged", "resolved", "rule"),
        ]
        assert len(device.notices) == 1
    device.close()


def test_two_engines_never_duplicate(broker: Mosquitto, dsn: str, uplinks: Uplinks) -> None:
    clock = Clock(NOON)
    a = AlertService(engine_config(broker.url, dsn, "alerts-a"), clock=clock, gate=False)
    b = AlertService(engine_config(broker.url, dsn, "alerts-b"), clock=clock, gate=False)
    devices = [f"pair-{i}" for i in range(30)]
    traffic = [m for d in devices for m in overuse_days(d, NOON, range(-5, 1))]
    with a, b:
        assert a.consumer.subscribed_event.wait(10) and b.consumer.subscribed_event.wait(10)
        uplinks.send(traffic)
        uplinks.send(traffic[::2])  # redelivered duplicates, spread over both engines too
        wait_for(lambda: a.messages + b.messages >= len(traffic) + len(traffic[::2]), 30, "all processed")
    assert a.messages > 0 and b.messages > 0, "the shared subscription should use both engines"
    per_episode = query(
        dsn,
        "select device_id, rule_id, episode_key, count(*) from alerts group by 1, 2, 3 having count(*) > 1",
    )
    assert per_episode == []
    o5 = query(
        dsn, "select count(distinct device_id) from alerts where rule_id = 'O5' and episode_key = 'rolling'"
    )
    assert o5 == [(len(devices),)]
    assert query(dsn, "select count(*) from alert_history") == [(len(devices) * 6,)]


def test_quiet_hours_hold_a_warning_and_let_a_critical_through(
    broker: Mosquitto, dsn: str, uplinks: Uplinks
) -> None:
    paris = ZoneInfo("Europe/Paris")
    clock = Clock(datetime(2024, 5, 10, 23, 30, tzinfo=paris).astimezone(UTC))
    query(
        dsn,
        "insert into device_profiles (device_id, tz_name, tz_offset_min) values ('night-1', 'Europe/Paris', 120)",
    )
    device = FakeDevice(broker.url, "night-1", clock)
    cfg = engine_config(
        broker.url, dsn, quiet_start=datetime(2000, 1, 1, 22).time(), quiet_end=datetime(2000, 1, 1, 8).time()
    )
    start = clock() - timedelta(minutes=25)
    # T7: a 900 µA sample (critical) and O1: 21 active minutes (warning; critical only past the auto-off + 2 min), in one session
    msgs = session("night-1", "s-night", start, 0, active_s=1250.0, currents=(200.0, 900.0, 200.0))
    with AlertService(cfg, clock=clock, gate=False) as svc:
        assert svc.consumer.subscribed_event.wait(10)
        uplinks.send(msgs)
        device.wait(lambda d: any(n.rule_id == "T7" for n in d.notices))
        # the warnings wait for the morning: O1 (the session) and O2 (over 20 active minutes in the day)
        sql = "select rule_id, release_at, sent_at from notice_outbox where rule_id <> 'T7' order by 1"
        held = wait_for(lambda: len(query(dsn, sql)) == 2 and query(dsn, sql), what="O1 and O2 notices")
        morning = datetime(2024, 5, 11, 8, 0, tzinfo=paris)
        assert held == [("O1", morning, None), ("O2", morning, None)]
        assert [n.rule_id for n in device.notices] == ["T7"]
        clock.set(datetime(2024, 5, 11, 8, 1, tzinfo=paris).astimezone(UTC))  # morning: the timer releases it
        # (both may arrive in one delivery round: the condition must not depend on seeing them one by one)
        device.wait(lambda d: sorted(n.rule_id for n in d.notices) == ["O1", "O2", "T7"])
        assert device.notices[0].rule_id == "T7"
    device.close()


class FlakyHook(BaseHTTPRequestHandler):
    posts: ClassVar[list[bytes]] = []
    fail_first = 2

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        FlakyHook.posts.append(body)
        self.send_response(500 if len(FlakyHook.posts) <= FlakyHook.fail_first else 200)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_webhook_retries_then_delivers_once(broker: Mosquitto, dsn: str, uplinks: Uplinks) -> None:
    FlakyHook.posts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyHook)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    clock = Clock(NOON)
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    cfg = engine_config(
        broker.url, dsn, webhook_url=url, webhook_backoff_base_s=0.05, webhook_backoff_cap_s=0.2
    )
    try:
        with AlertService(cfg, clock=clock, gate=False) as svc:
            assert svc.consumer.subscribed_event.wait(10)
            uplinks.send(
                session("hook-1", "s-hook", NOON - timedelta(minutes=10), 0, currents=(200.0, 950.0))
            )
            rows = wait_for(
                lambda: query(
                    dsn,
                    "select attempts, delivered_at, last_error from webhook_deliveries where delivered_at is not null",
                ),
                what="webhook delivered",
            )
        assert len(rows) == 1 and rows[0][0] == 3 and "HTTP 500" in rows[0][2]
        assert query(dsn, "select count(*) from webhook_deliveries") == [(1,)]
        assert len(FlakyHook.posts) == 3 and len(set(FlakyHook.posts)) == 1
        body = json.loads(FlakyHook.posts[0])
        assert (
            body["event"] == "opened"
            and body["alert"]["rule_id"] == "T7"
            and body["alert"]["severity"] == "critical"
        )
    finally:
        server.shutdown()
        server.server_close()


def test_safety_gate_set_and_cleared(broker: Mosquitto, dsn: str) -> None:
    clock = Clock(NOON)
    query(dsn, "insert into device_profiles (device_id, pregnancy, epilepsy) values ('gate-1', true, true)")
    device = FakeDevice(broker.url, "gate-1", clock)
    with AlertService(engine_config(broker.url, dsn), clock=clock):
        device.wait(lambda d: bool(d.gates) and d.gates[-1].blocked)
        assert device.gates[-1].reasons == ("epilepsy", "pregnancy")
        [(rule, key, state, blocking)] = query(
            dsn, "select rule_id, episode_key, state, blocking from alerts"
        )
        assert (rule, key, state, blocking) == ("C1", "contraindication", "open", True)
        query(
            dsn,
            "update device_profiles set pregnancy = false, epilepsy = false, updated_at = now() where device_id = 'gate-1'",
        )
        device.wait(lambda d: not d.gates[-1].blocked)
        wait_for(
            lambda: query(dsn, "select state, resolved_by from alerts") == [("resolved", "rule")],
            what="C1 resolved",
        )
    device.close()
    late = FakeDevice(broker.url, "gate-1", clock)  # a device that reconnects converges on the retained gate
    late.wait(lambda d: bool(d.gates) and not d.gates[-1].blocked)
    late.close()


def test_the_timer_sweep_resolves_a_sliding_alert_as_days_pass(
    broker: Mosquitto, dsn: str, uplinks: Uplinks
) -> None:
    """The service owns the sweep: with no further session, days passing resolve the weekly-frequency
    alert by rule (tests/cloud/test_alerts_sweep.py has the sweep's cases)."""
    clock = Clock(NOON)
    with AlertService(engine_config(broker.url, dsn, sweep_s=0.4), clock=clock, gate=False) as svc:
        assert svc.consumer.subscribed_event.wait(10)
        uplinks.send(overuse_days("rest-1", NOON, range(-5, 1)))
        wait_for(lambda: alerts_of(dsn, "rest-1"), what="the overuse alert")
        assert alerts_of(dsn, "rest-1")[0][1:5] == ("O5", "rolling", "info", "open")
        clock.advance(timedelta(days=5))  # two days of use left in the last seven
        wait_for(lambda: alerts_of(dsn, "rest-1")[0][4] == "resolved", what="the sweep resolves it")
        assert alerts_of(dsn, "rest-1")[0][6] == "rule"
        assert svc.swept >= 1
