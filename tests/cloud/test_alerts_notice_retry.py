"""A notice the broker answers 0x10 (no subscriber: the device is offline) is tried again after a doubling
delay, capped, per notice, until it is delivered (it was tried on every timer tick: ~10 a second here)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from cloud.alerts.delivery import NOTICE_RETRY_CAP_S, retry_delay_s
from cloud.alerts.service import AlertService
from cloud.db.migrate import migrate
from tests.cloud.test_alerts_engine_support import (
    Clock,
    FakeDevice,
    Uplinks,
    engine_config,
    query,
    session,
    wait_for,
)
from tests.support.services import Mosquitto

NOON = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)


def test_the_retry_schedule_doubles_from_the_timer_and_is_capped() -> None:
    assert [retry_delay_s(n, 1.0) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert [retry_delay_s(n, 0.1) for n in range(1, 5)] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert retry_delay_s(10_000, 1.0) == NOTICE_RETRY_CAP_S  # no overflow for a notice tried for days


@pytest.mark.slow
def test_an_offline_devices_notice_backs_off_then_is_delivered(broker: Mosquitto, database_url: str) -> None:
    migrate(database_url)
    dsn = database_url
    clock = Clock(NOON)
    uplinks = Uplinks(broker.url)
    cfg = engine_config(broker.url, dsn, timer_s=0.1)  # retries at 0.1, 0.2, 0.4, 0.8, 1.6 ... s
    try:
        with AlertService(cfg, clock=clock, gate=False) as svc:
            assert svc.consumer.subscribed_event.wait(10)
            # a critical notice (T7) for a device nobody subscribes for: every try is answered 0x10
            uplinks.send(
                session("away-1", "s-away", NOON - timedelta(minutes=10), 0, currents=(200.0, 950.0))
            )
            tries = "select attempts from notice_outbox where device_id = 'away-1'"
            wait_for(lambda: query(dsn, tries) and query(dsn, tries)[0][0] >= 1, what="a first try")
            first = time.monotonic()
            time.sleep(3.0)
            [(n,)] = query(dsn, tries)
            # 0 s, 0.1, 0.3, 0.7, 1.5 (, 3.1): at most 6 tries in 3 s (one per 0.1 s tick: ~30); a loaded
            # machine delays ticks, so fewer is fine as long as it was tried again
            assert 3 <= n <= 6, f"{n} tries in {time.monotonic() - first:.1f} s"
            [(sent,)] = query(dsn, "select sent_at from notice_outbox where device_id = 'away-1'")
            assert sent is None
            device = FakeDevice(broker.url, "away-1", clock, ack=False)
            try:
                # still tried: delivered at its next try (within the current 1.6-3.2 s delay)
                device.wait(lambda d: len(d.notices) == 1, timeout=8)
            finally:
                device.close()
            # the device can hold the notice before the engine has read the PUBACK and recorded it
            done = "select attempts from notice_outbox where device_id = 'away-1' and sent_at is not null"
            wait_for(lambda: bool(query(dsn, done)), what="the delivery recorded (sent_at)")
            [(n_final,)] = query(dsn, done)
            assert n_final <= 8
    finally:
        uplinks.close()
