"""Overuse seen by the alert engine reaches the real edge agent as a notice, which the user acknowledges;
a contraindication in the profile blocks the real agent's sessions through the safety gate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cloud.alerts.service import AlertService
from cloud.db.migrate import migrate
from contract.messages import EndReason, Notice
from edge.app import Agent
from edge.clock import ManualClock
from edge.notices import SessionRefused
from edge.sensor import DemoSensor
from tests.cloud.test_alerts_engine_support import engine_config
from tests.edge.conftest import fast_config
from tests.support.services import Mosquitto

pytestmark = pytest.mark.slow


class Screen:
    def __init__(self) -> None:
        self.shown: list[Notice] = []

    def show(self, notice: Notice) -> None:
        self.shown.append(notice)


def query(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


async def until(predicate: Callable[[], Any], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_overuse_notice_reaches_the_agent_and_is_acknowledged(
    tmp_path: Path, broker: Mosquitto, database_url: str
) -> None:
    migrate(database_url)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    # The device's local time is about noon whatever the hour of the run in UTC: its three sessions of one
    # local day (05:50, 08:52, 11:54) lie in the past, and the notice is neither held by quiet hours
    # (22:00-08:00) nor expired with the day (the test used to start at today's 00:05 UTC, so a run soon
    # after midnight sent sessions from the future, which the engine rightly refuses).
    since_midnight = now - now.replace(hour=0, minute=0)
    offset_min = int((timedelta(hours=12) - since_midnight).total_seconds() // 60)  # within +-12 h
    clock = ManualClock(now - timedelta(hours=6, minutes=10))
    screen = Screen()
    cfg = fast_config(
        tmp_path, broker.url, device_id="over-agent", samples_per_batch=30, tz_offset_min=offset_min
    )
    with AlertService(engine_config(broker.url, database_url)) as svc:
        assert svc.consumer.subscribed_event.wait(10)
        async with Agent(cfg, clock=clock, display=screen) as agent:
            sensor = DemoSensor(seed=3)
            for k in range(3):  # three sessions in one day: O3 (at most one a day, warn at 3)
                if k:
                    clock.advance(3 * 3600)  # the device's clock stays in the past: its events follow
                agent.start_session(3)
                for _s in range(120):
                    clock.advance(1.0)
                    agent.record(sensor.read(clock.now(), 3))
                agent.end_session(EndReason.USER)
            await until(lambda: any(n.rule_id == "O3" for n in screen.shown), "the O3 notice on the device")
            notice = next(n for n in screen.shown if n.rule_id == "O3")
            assert "session" in notice.text.lower() or "rest" in notice.text.lower()
            # one alert for the day: raised as info at the second session, escalated at the third
            [(state, severity, count)] = query(
                database_url,
                "SELECT state, severity::text, count FROM alerts WHERE device_id = %s AND rule_id = 'O3'",
                "over-agent",
            )
            assert (state, severity, count) == ("open", "warning", 2)
            agent.notices.acknowledge(notice.notice_id)
            await until(
                lambda: query(
                    database_url, "SELECT acked_at FROM notice_outbox WHERE notice_id = %s", notice.notice_id
                )[0][0],
                "the user's acknowledgement recorded by the cloud",
            )


async def test_contraindication_blocks_the_agent_until_cleared(
    tmp_path: Path, broker: Mosquitto, database_url: str
) -> None:
    migrate(database_url)
    cfg = fast_config(tmp_path, broker.url, device_id="gated-agent")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, model) VALUES ('gated-agent', 'mf-home-1') ON CONFLICT DO NOTHING"
        )
        conn.execute(
            "INSERT INTO device_profiles (device_id, pregnancy, updated_by) VALUES ('gated-agent', true, 'test')"
        )
    with AlertService(engine_config(broker.url, database_url)) as svc:
        assert svc.consumer.subscribed_event.wait(10)
        async with Agent(cfg) as agent:
            async with asyncio.timeout(30):
                while agent.notices.gate is None or not agent.notices.gate.blocked:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            with pytest.raises(SessionRefused):
                agent.start_session(2)
            assert query(
                database_url, "SELECT rule_id, blocking, state FROM alerts WHERE device_id = 'gated-agent'"
            ) == [("C1", True, "open")]
            with psycopg.connect(database_url) as conn:
                conn.execute(
                    "UPDATE device_profiles SET pregnancy = false, updated_at = now() WHERE device_id = 'gated-agent'"
                )
            async with asyncio.timeout(30):
                while agent.notices.gate.blocked:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert agent.start_session(2)
