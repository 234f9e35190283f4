"""Plain PostgreSQL path: partitions created ahead and dropped by retention, the DEFAULT partition,
rollup tables recomputed for the touched buckets (real PostgreSQL, scratch databases, injected `now`)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from cloud.db.maintenance import maintain, run_once
from cloud.db.migrate import migrate
from cloud.db.rollups import refresh_pending_rollups, refresh_rollups

NOW = datetime(2031, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def partitions(conn: psycopg.Connection[Any], relation: str) -> set[str]:
    rows = conn.execute(
        "select inhrelid::regclass::text from pg_inherits where inhparent = %s::regclass", (relation,)
    ).fetchall()
    return {r[0] for r in rows}


def add_sample(conn: psycopg.Connection[Any], device: str, ts: datetime, **cols: Any) -> None:
    values = {
        "current_ua": 100.0,
        "voltage_v": 3.0,
        "impedance_ohm": 5000.0,
        "contact": True,
        "zone": "cheek",
        "level": 3,
    }
    values |= cols
    conn.execute(
        """insert into samples (device_id, ts, session_id, current_ua, voltage_v, impedance_ohm, contact, zone, level)
           values (%s, %s, 's1', %s, %s, %s, %s, %s, %s)""",
        (device, ts, *values.values()),
    )


def test_partitions_are_created_ahead_and_dropped_after_retention(conn: psycopg.Connection[Any]) -> None:
    changes = maintain(conn, NOW)
    days = {f"samples_p{(NOW + timedelta(days=d)):%Y%m%d}" for d in range(-14, 8)}
    assert days <= partitions(conn, "samples")
    assert {"sessions_p20310201", "sessions_p20310301"} <= partitions(
        conn, "sessions"
    )  # monthly, 14 days back
    assert {c.partition for c in changes if c.relation == "samples" and c.action == "created"} >= days
    assert maintain(conn, NOW) == []  # idempotent

    add_sample(conn, "dev-old", NOW - timedelta(days=1))
    later = NOW + timedelta(days=100)  # samples keep 90 days: everything up to later-90d goes
    changes = maintain(conn, later)
    dropped = {c.partition for c in changes if c.action == "dropped"}
    cutoff = later - timedelta(days=90)
    assert days <= dropped  # all end before the cutoff
    assert all(c.relation in ("samples", "uplink_log") for c in changes if c.action == "dropped")
    kept = {p for p in partitions(conn, "samples") if p != "samples_default"}
    assert kept == {f"samples_p{(later + timedelta(days=d)):%Y%m%d}" for d in range(-14, 8)}
    assert all(p >= f"samples_p{cutoff:%Y%m%d}" for p in kept)
    assert conn.execute("select count(*) from samples where device_id = 'dev-old'").fetchone() == (0,)
    assert "sessions_p20310301" in partitions(conn, "sessions")  # 2-year retention


def test_default_partition_catches_far_out_rows_and_maintain_moves_them(
    conn: psycopg.Connection[Any],
) -> None:
    maintain(conn, NOW)
    far = NOW + timedelta(days=365)
    add_sample(conn, "dev-far", far)
    add_sample(conn, "dev-far", far + timedelta(seconds=1))
    where = "select tableoid::regclass::text, count(*) from samples where device_id = 'dev-far' group by 1"
    assert conn.execute(where).fetchall() == [("samples_default", 2)]

    changes = maintain(conn, far)
    part = f"samples_p{far:%Y%m%d}"
    assert any(c.partition == part and c.action == "created" and c.rows == 2 for c in changes)
    assert conn.execute(where).fetchall() == [(part, 2)]
    with pytest.raises(psycopg.errors.UniqueViolation):  # the natural key still holds in the moved rows
        add_sample(conn, "dev-far", far)


def test_default_partition_rows_expire_with_retention(conn: psycopg.Connection[Any]) -> None:
    ancient = NOW - timedelta(days=400)  # no partition was ever created for it
    add_sample(conn, "dev-ancient", ancient)
    changes = maintain(conn, NOW)
    assert any(c.action == "deleted" and c.partition == "samples_default" and c.rows == 1 for c in changes)
    assert conn.execute("select count(*) from samples where device_id = 'dev-ancient'").fetchone() == (0,)


def hourly(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select bucket, device_id, samples, active_s, current_ua_max, level_max from usage_device_hourly order by 1, 2"
    ).fetchall()


def test_rollups_recompute_touched_buckets_idempotently(conn: psycopg.Connection[Any]) -> None:
    day = datetime(2031, 3, 9, tzinfo=UTC)
    h23 = day + timedelta(hours=23)
    for i in range(4):  # dev-a: 4 samples at 23:00, 2 with contact; dev-b: 2 samples at 23:00 and 1 next day
        add_sample(
            conn, "dev-a", h23 + timedelta(seconds=i), current_ua=100.0 + 50 * i, contact=i % 2 == 0, level=i
        )
    add_sample(conn, "dev-b", h23 + timedelta(minutes=5), current_ua=10.0)
    add_sample(conn, "dev-b", h23 + timedelta(minutes=6), current_ua=30.0)
    add_sample(conn, "dev-b", h23 + timedelta(hours=1, minutes=1), current_ua=500.0, level=7)

    report = refresh_rollups(conn, h23, h23 + timedelta(hours=2))
    assert (report.hours, report.days) == (2, 2)
    expected = [
        (h23, "dev-a", 4, 2, 250.0, 3),
        (h23, "dev-b", 2, 2, 30.0, 3),
        (h23 + timedelta(hours=1), "dev-b", 1, 1, 500.0, 7),
    ]
    assert hourly(conn) == expected
    avg = conn.execute("select current_ua_avg from usage_device_hourly where device_id = 'dev-a'").fetchone()
    assert avg == (pytest.approx(175.0),)
    fleet = conn.execute(
        "select bucket, devices, samples, active_s, current_ua_avg, current_ua_max from usage_fleet_daily order by 1"
    ).fetchall()
    assert fleet == [
        (day, 2, 6, 4, pytest.approx((100 + 150 + 200 + 250 + 10 + 30) / 6), 250.0),
        (day + timedelta(days=1), 1, 1, 1, 500.0, 500.0),
    ]
    daily = conn.execute(
        "select device_id, samples, level_max from usage_device_daily where bucket = %s order by 1", (day,)
    ).fetchall()
    assert daily == [("dev-a", 4, 3), ("dev-b", 2, 3)]

    refresh_rollups(conn, h23, h23 + timedelta(hours=2))
    assert hourly(conn) == expected  # rerun: same rows

    conn.execute("delete from samples where device_id = 'dev-b' and ts < %s", (day + timedelta(days=1),))
    refresh_rollups(conn, h23 + timedelta(minutes=30), h23 + timedelta(minutes=31))  # any instant of the hour
    assert hourly(conn) == [expected[0], expected[2]]
    assert conn.execute("select devices from usage_fleet_hourly where bucket = %s", (h23,)).fetchone() == (1,)


def test_pending_rollups_pick_up_late_rows(conn: psycopg.Connection[Any]) -> None:
    now = datetime.now(UTC)
    add_sample(conn, "dev-late", now - timedelta(days=10), current_ua=42.0)
    add_sample(conn, "dev-late", now - timedelta(minutes=1), current_ua=43.0)
    report = run_once(conn, now)
    assert report.rollups.hours == 2
    rows = conn.execute(
        "select samples, current_ua_max from usage_device_hourly where device_id = 'dev-late' order by bucket"
    ).fetchall()
    assert rows == [(1, 42.0), (1, 43.0)]
    assert refresh_pending_rollups(conn).hours == 0  # consumed


def test_rollup_retention_deletes_old_hourly_rows(conn: psycopg.Connection[Any]) -> None:
    old = datetime(2030, 1, 1, 5, tzinfo=UTC)
    add_sample(conn, "dev-r", old)
    refresh_rollups(conn, old, old + timedelta(hours=1))
    changes = maintain(conn, old + timedelta(days=401))
    assert any(c.relation == "usage_device_hourly" and c.action == "deleted" and c.rows == 1 for c in changes)
    assert conn.execute("select count(*) from usage_device_daily where device_id = 'dev-r'").fetchone() == (
        1,
    )
