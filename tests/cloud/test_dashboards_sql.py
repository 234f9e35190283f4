"""Every panel's SQL and every variable query, expanded as Grafana would (macros.expand), run against a
migrated and seeded database on both storage paths; each must return rows of the expected shape."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from cloud.dashboards.catalog import DASHBOARDS
from cloud.dashboards.macros import All, VariableValue, expand
from cloud.dashboards.sdk import dashboard_builder
from cloud.dashboards.spec import ALL_VALUE, Col, PanelSpec
from cloud.db.migrate import StoragePath, current_path, migrate
from cloud.db.rollups import refresh_rollups
from tests.cloud import dashboard_seed

NOW = datetime.now(UTC).replace(microsecond=0)
START, END = NOW - timedelta(days=30), NOW + timedelta(minutes=5)

ALL_VARS: dict[str, VariableValue] = {
    "model": All(ALL_VALUE),
    "firmware": All(ALL_VALUE),
    "protocol": All(ALL_VALUE),
    "tz": "UTC",
    "rollout": str(dashboard_seed.ROLLOUT_ID),
}
PICKED_VARS: dict[str, VariableValue] = {
    "model": ("mf-home-1",),
    "firmware": ("1.4.0", "1.3.2"),
    "protocol": ("starter", "o'hara"),  # a quote in a value must not break the SQL
    "tz": "Europe/Paris",
    "rollout": str(dashboard_seed.OTHER_ROLLOUT_ID),
}
NO_ROLLOUT_YET: dict[str, VariableValue] = {**ALL_VARS, "rollout": ""}  # the variable's list is empty

DEVICES = [
    # device_id, model, fw, protocol, version, state, last_seen, outbox_depth, outbox_dropped
    ("dev-a", "mf-home-1", "1.4.0", "starter", 2, "online", NOW, 0, 0),
    ("dev-b", "mf-home-1", "1.3.2", "maintenance", 1, "offline", NOW - timedelta(days=2), 120, 3),
    ("dev-c", "mf-pro-1", "2.0.1", "clinic", 1, "online", NOW - timedelta(minutes=1), 5, 0),
]
ZONES = json.dumps([{"zone": "cheek_l", "dwell_s": 60.0}, {"zone": "forehead", "dwell_s": 90.0}])
SESSIONS = [
    # device, session, started, active_s, level_max, contact_ok, impedance_median, spikes, charging, max_ua, ended
    ("dev-a", "a1", NOW, 300.0, 3, 0.97, 6000.0, 0, False, 310.0, True),
    ("dev-a", "a2", NOW - timedelta(days=1), 1500.0, 5, 0.95, 7000.0, 0, False, 400.0, True),
    ("dev-b", "b1", NOW - timedelta(days=2), 240.0, 2, 0.6, 80000.0, 4, False, 150.0, True),
    ("dev-c", "c1", NOW - timedelta(hours=5), 1800.0, 4, 0.9, 4000.0, 1, True, 1100.0, True),
    ("dev-c", "c2", NOW - timedelta(minutes=2), 0.0, 2, 1.0, 5000.0, 0, False, 0.0, False),
]
SAMPLE_HOURS = [NOW - timedelta(hours=1), NOW - timedelta(hours=26), NOW - timedelta(days=3)]

# What some panels must say about the seed with every variable on All: the SQL is checked, not only run.
EXPECTED_FIRST_ROW = {
    ("mf-fleet", "Devices"): (6, 2, 1),  # 3 with sessions + 3 rollout targets (dashboard_seed)
    ("mf-fleet", "Sessions today"): (
        sum(1 for s in SESSIONS if s[2].date() == NOW.date()),
        len({s[0] for s in SESSIONS if s[2].date() == NOW.date()}),
    ),
    ("mf-fleet", "Active devices (users) in range"): (3,),
    ("mf-safety", "Envelope breaches in range"): (2, 1, 1),
    ("mf-platform", "Outbox backlog reported by devices"): (125, 120, 2, 3),
    ("mf-platform", "Sequence gaps in range"): (1, 1),
}


def seed(conn: psycopg.Connection[Any]) -> None:
    for dev in [(*d, NOW - dashboard_seed.FIRST_SEEN) for d in DEVICES] + dashboard_seed.ota_devices(NOW):
        conn.execute(
            "INSERT INTO devices (device_id, model, fw_version, protocol_id, protocol_version, state, last_seen,"
            " outbox_depth, outbox_dropped, first_seen, tz_offset_min) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,60)",
            dev,
        )
    for dev_id, sid, started, active, level, ok, imp, spikes, charging, max_ua, ended in SESSIONS:
        conn.execute(
            "INSERT INTO sessions (device_id, session_id, started_at, ended_at, end_reason, level_start, level_max,"
            " tz_offset_min, protocol_id, protocol_version, fw_version, duration_on_s, duration_active_s, samples,"
            " current_ua_mean, current_ua_max, impedance_ohm_median, contact_ok_ratio, impedance_spikes,"
            " charging_during_output, zones)"
            " SELECT %s, %s, %s, %s, %s, 2, %s, 60, d.protocol_id, d.protocol_version, d.fw_version, %s, %s,"
            " 10, 200, %s, %s, %s, %s, %s, %s::jsonb FROM devices d WHERE d.device_id = %s",
            (
                dev_id, sid, started, started + timedelta(seconds=active) if ended else None,
                "user" if ended else None, level, active, active, max_ua, imp, ok, spikes, charging,
                ZONES if ended else None, dev_id,
            ),
        )  # fmt: skip
    for dev_id, *_ in DEVICES:
        for hour in SAMPLE_HOURS:
            for i in range(3):
                conn.execute(
                    "INSERT INTO samples (device_id, ts, session_id, current_ua, voltage_v, impedance_ohm,"
                    " contact, zone, level) VALUES (%s, %s, 's', 250, 1.5, 6000, %s, 'cheek_l', 3)",
                    (dev_id, hour + timedelta(seconds=i), i != 2),
                )
    for seq in (1, 2, 4, 5):  # seq 3 is missing: one gap on one device
        sent = NOW - timedelta(minutes=10, seconds=-seq)
        conn.execute(
            "INSERT INTO uplink_log (device_id, seq, kind, sent_at, stored_at, consumer) VALUES (%s,%s,%s,%s,%s,%s)",
            (
                "dev-a",
                seq,
                "samples" if seq % 2 else "status",
                sent,
                sent + timedelta(seconds=seq),
                f"ingest-{seq % 2}",
            ),
        )
    for i, reason in enumerate(("not_json", "schema")):
        conn.execute(
            "INSERT INTO quarantine (received_at, topic, payload, payload_sha256, reason, detail, consumer)"
            " VALUES (%s, 'mf/v1/dev-x/up/samples', %s, %s, %s, 'bad', 'ingest-1')",
            (NOW - timedelta(minutes=5 + i), b"{nope", bytes([i]) * 32, reason),
        )
    dashboard_seed.seed(conn, NOW)


def panels() -> Iterator[tuple[str, PanelSpec, str, str]]:
    """(dashboard uid, spec, rawSql, format) for every panel of every built dashboard."""
    for spec in DASHBOARDS:
        built = json.loads(
            json.dumps(dashboard_builder(spec).build().to_json(), default=lambda o: o.to_json())
        )
        by_title = {p.title: p for p in spec.panels}
        for panel in built["panels"]:
            if by_title[panel["title"]].promql:
                continue  # Prometheus panels: tests/cloud/test_dashboards_prom.py
            (target,) = panel["targets"]
            yield spec.uid, by_title[panel["title"]], target["rawSql"], target["format"]


def variable_queries() -> Iterator[tuple[str, str]]:
    for spec in DASHBOARDS:
        for v in spec.variables:
            if v.query:
                yield v.name, v.query


def check_shape(panel: PanelSpec, cur: psycopg.Cursor[Any], rows: list[tuple[Any, ...]]) -> None:
    assert cur.description is not None
    names = tuple(c.name for c in cur.description)
    assert names == tuple(n for n, _ in panel.columns), panel.title
    for row in rows:
        for value, (name, kind) in zip(row, panel.columns, strict=True):
            if value is None:
                assert kind is Col.NUMBER, f"{panel.title}: {name} is null"
            elif kind is Col.TIME:
                assert isinstance(value, datetime | float | Decimal), (panel.title, name, value)
            elif kind is Col.NUMBER:
                assert isinstance(value, int | float | Decimal) and not isinstance(value, bool), (
                    panel.title,
                    name,
                )
            else:
                assert isinstance(value, str), (panel.title, name, value)


def run_all(dsn: str, *, timescaledb: bool) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    results: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for uid, panel, raw_sql, fmt in panels():
            assert fmt == panel.format
            for variables in (ALL_VARS, PICKED_VARS):
                sql = expand(raw_sql, start=START, end=END, variables=variables, timescaledb=timescaledb)
                cur = conn.execute(sql.encode())
                rows = cur.fetchall()
                check_shape(panel, cur, rows)
                if variables is ALL_VARS:
                    assert rows, f"{uid} / {panel.title} returned no rows over the seed"
                    results[(uid, panel.title)] = rows
            if "$rollout" in raw_sql:
                sql = expand(raw_sql, start=START, end=END, variables=NO_ROLLOUT_YET, timescaledb=timescaledb)
                cur = conn.execute(sql.encode())
                check_shape(panel, cur, cur.fetchall())
        for name, query in variable_queries():
            values = [r[0] for r in conn.execute(query.encode()).fetchall()]
            assert values and all(isinstance(v, str) for v in values), name
    return results


def migrate_seed_refresh(dsn: str, path: StoragePath) -> None:
    migrate(dsn)
    with psycopg.connect(dsn) as conn:
        seed(conn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert current_path(conn) is path
        refresh_rollups(conn, NOW - timedelta(days=5), NOW + timedelta(hours=1))


def check_expected(results: dict[tuple[str, str], list[tuple[Any, ...]]]) -> None:
    for key, expected in EXPECTED_FIRST_ROW.items():
        assert tuple(results[key][0]) == expected, key
    contact = results[("mf-safety", "Devices with contact problems")]
    assert [tuple(r[:6]) for r in contact] == [("dev-b", "mf-home-1", 1, 1, 1, 4)]  # the gel skimper only
    assert float(contact[0][6]) == 80.0
    firmware = dict(results[("mf-fleet", "Firmware versions")])
    assert firmware == {"1.4.0": 1, "1.3.2": 4, "2.0.1": 1}
    zones = {r[0]: float(r[1]) for r in results[("mf-usage", "Time by zone")]}
    assert zones == {"forehead": 6.0, "cheek_l": 4.0}  # 4 ended sessions x 90 s and x 60 s
    dashboard_seed.check_alert_panels(results)
    dashboard_seed.check_ota_panels(results, NOW)


def test_every_panel_on_plain_postgresql(database_url: str) -> None:
    migrate_seed_refresh(database_url, StoragePath.PLAIN)
    check_expected(run_all(database_url, timescaledb=False))


def test_no_panel_scans_raw_samples(database_url: str) -> None:
    """Panels read rollups and summaries: no plan touches the samples table or its partitions."""
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for uid, panel, raw_sql, _ in panels():
            sql = expand(raw_sql, start=START, end=END, variables=ALL_VARS)
            plan = "\n".join(r[0] for r in conn.execute(b"EXPLAIN " + sql.encode()).fetchall())
            assert not re.search(r"\bon samples\w*", plan), f"{uid} / {panel.title} scans samples:\n{plan}"


@pytest.mark.timescale
def test_every_panel_on_timescaledb() -> None:
    from tests.support.pglite import PgliteUnavailable, pglite_server

    try:
        server = pglite_server()
        dsn = server.__enter__()
    except PgliteUnavailable as exc:
        pytest.skip(str(exc))
    try:
        migrate_seed_refresh(dsn, StoragePath.TIMESCALE)
        check_expected(run_all(dsn, timescaledb=True))
    finally:
        server.__exit__(None, None, None)
