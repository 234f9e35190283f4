"""TimescaleDB path, for real, on PGlite + TimescaleDB 2.23 (tests/support/pglite.py: one connection at
a time, no COPY), and the same rollup queries on both paths."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from cloud.db.maintenance import maintain
from cloud.db.migrate import StoragePath, current_path, migrate
from cloud.db.rollups import refresh_rollups
from cloud.db.status import collect
from tests.support.pglite import PgliteUnavailable, pglite_server
from tests.support.services import scratch_database

pytestmark = pytest.mark.timescale
SERIES = {"samples", "sessions", "device_events", "uplink_log"}
CAGGS = {"usage_device_hourly", "usage_device_daily", "usage_fleet_hourly", "usage_fleet_daily"}


@pytest.fixture(scope="module")
def timescale_dsn() -> Iterator[str]:
    """One PGlite server for the module, migrated once (the tests below use disjoint devices)."""
    try:
        with pglite_server() as dsn:
            assert migrate(dsn)[:3] == ["0001_core", "0002_timeseries", "0003_rollups"]
            yield dsn
    except PgliteUnavailable as exc:
        pytest.skip(str(exc))


def test_migrate_is_idempotent_and_picks_the_timescale_path(timescale_dsn: str) -> None:
    assert migrate(timescale_dsn) == []
    with psycopg.connect(timescale_dsn) as conn:
        assert current_path(conn) is StoragePath.TIMESCALE


def test_hypertables_policies_and_caggs(timescale_dsn: str) -> None:
    with psycopg.connect(timescale_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select hypertable_name, compression_enabled from timescaledb_information.hypertables"
        ).fetchall()
        assert {name for name, compressed in rows if compressed} >= SERIES
        jobs = conn.execute(
            "select proc_name, coalesce(hypertable_name, ''), config from timescaledb_information.jobs"
        ).fetchall()
        compression = {h: c for p, h, c in jobs if p == "policy_compression"}
        retention = {h: c["drop_after"] for p, h, c in jobs if p == "policy_retention"}
        assert compression.keys() == SERIES and all(
            c["compress_after"] == "17 days" for c in compression.values()
        )
        assert {h: retention[h] for h in SERIES} == {
            "samples": "90 days",
            "uplink_log": "30 days",
            "sessions": "730 days",
            "device_events": "730 days",
        }
        caggs = conn.execute("select view_name from timescaledb_information.continuous_aggregates").fetchall()
        assert {v for (v,) in caggs} == CAGGS
        refresh = sorted(h for p, h, _ in jobs if p == "policy_refresh_continuous_aggregate")
        assert refresh == sorted(CAGGS)
        assert retention["usage_device_hourly"] == "400 days"
        seg = conn.execute(
            "select attname from timescaledb_information.compression_settings where hypertable_name = 'samples' and segmentby_column_index = 1"
        ).fetchall()
        assert seg == [("device_id",)]
        assert maintain(conn, datetime.now(UTC)) == []  # TimescaleDB's own policies do the work


def columns(dsn: str) -> dict[str, list[tuple[str, str]]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            """select table_name, column_name, data_type from information_schema.columns
               where table_schema = 'public' and table_name = any(%s) order by table_name, ordinal_position""",
            (sorted(SERIES | CAGGS | {"devices", "quarantine"}),),
        ).fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype in rows:
        out.setdefault(table, []).append((column, dtype))
    return out


def test_both_paths_have_the_same_relations_and_columns(timescale_dsn: str) -> None:
    with scratch_database() as plain:
        migrate(plain)
        expected = columns(plain)
    assert expected.keys() == SERIES | CAGGS | {"devices", "quarantine"}
    assert columns(timescale_dsn) == expected


# --- the same rows and the same query text on both paths -------------------------------------------

DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
H23 = DAY + timedelta(hours=23)
# (device, ts, current_ua, contact, level): dev-a 4 samples at 23:00 (2 with contact); dev-b 2 then 1 next day
ROWS = [("{p}-a", H23 + timedelta(seconds=i), 100.0 + 50 * i, i % 2 == 0, i) for i in range(4)] + [
    ("{p}-b", H23 + timedelta(minutes=5), 10.0, True, 3),
    ("{p}-b", H23 + timedelta(minutes=6), 30.0, True, 3),
    ("{p}-b", H23 + timedelta(hours=1, minutes=1), 500.0, True, 7),
]
QUERIES = {
    "usage_device_hourly": "select bucket, device_id, samples, active_s, current_ua_avg, current_ua_max, level_max "
    "from usage_device_hourly where device_id like %(p)s order by bucket, device_id",
    "usage_device_daily": "select bucket, device_id, samples, active_s, current_ua_avg, current_ua_max, level_max "
    "from usage_device_daily where device_id like %(p)s order by bucket, device_id",
    "usage_fleet_hourly": "select bucket, devices, samples, active_s, current_ua_avg, current_ua_max "
    "from usage_fleet_hourly where bucket >= %(lo)s and bucket < %(hi)s order by bucket",
    "usage_fleet_daily": "select bucket, devices, samples, active_s, current_ua_avg, current_ua_max "
    "from usage_fleet_daily where bucket >= %(lo)s and bucket < %(hi)s order by bucket",
}
avg_a, avg_b, avg_day = 175.0, 20.0, (100 + 150 + 200 + 250 + 10 + 30) / 6
EXPECTED: dict[str, list[tuple[Any, ...]]] = {
    "usage_device_hourly": [
        (H23, "{p}-a", 4, 2, avg_a, 250.0, 3),
        (H23, "{p}-b", 2, 2, avg_b, 30.0, 3),
        (H23 + timedelta(hours=1), "{p}-b", 1, 1, 500.0, 500.0, 7),
    ],
    "usage_device_daily": [
        (DAY, "{p}-a", 4, 2, avg_a, 250.0, 3),
        (DAY, "{p}-b", 2, 2, avg_b, 30.0, 3),
        (DAY + timedelta(days=1), "{p}-b", 1, 1, 500.0, 500.0, 7),
    ],
    "usage_fleet_hourly": [(H23, 2, 6, 4, avg_day, 250.0), (H23 + timedelta(hours=1), 1, 1, 1, 500.0, 500.0)],
    "usage_fleet_daily": [(DAY, 2, 6, 4, avg_day, 250.0), (DAY + timedelta(days=1), 1, 1, 1, 500.0, 500.0)],
}
TYPES = {"bucket": "timestamptz", "device_id": "text", "devices": "int8", "samples": "int8", "active_s": "int8",
         "current_ua_avg": "float8", "current_ua_max": "float4", "level_max": "int2"}  # fmt: skip


@pytest.fixture(params=["plain", "timescale"])
def any_path(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "timescale":
        yield request.getfixturevalue("timescale_dsn")
    else:
        with scratch_database() as dsn:
            migrate(dsn)
            yield dsn


def _insert_rows(conn: psycopg.Connection[Any], prefix: str) -> None:
    rows = [(d.format(p=prefix), ts, cur, contact, level) for d, ts, cur, contact, level in ROWS]
    conn.execute(  # one INSERT from arrays (the PGlite server takes no COPY)
        """insert into samples (device_id, ts, session_id, current_ua, voltage_v, impedance_ohm, contact, zone, level)
           select d, t, 's1', c, 3.0, 5000.0, k, 'cheek', l
           from unnest(%s::text[], %s::timestamptz[], %s::real[], %s::bool[], %s::smallint[]) as u(d, t, c, k, l)""",
        [list(col) for col in zip(*rows, strict=True)],
    )


def test_same_rollup_queries_give_the_same_answers_on_both_paths(any_path: str) -> None:
    with psycopg.connect(any_path, autocommit=True) as conn:
        path = current_path(conn)
        assert path is not None
        prefix = f"same-{path}"
        # the fleet buckets are shared by the module's PGlite database: use a day nothing else writes to
        _insert_rows(conn, prefix)
        refresh_rollups(conn, H23, H23 + timedelta(hours=2))
        refresh_rollups(conn, H23, H23 + timedelta(hours=2))  # idempotent
        for view, query in QUERIES.items():
            cur = conn.execute(query, {"p": f"{prefix}-%", "lo": DAY, "hi": DAY + timedelta(days=2)})
            got = cur.fetchall()
            want = [
                tuple(v.format(p=prefix) if isinstance(v, str) else v for v in row) for row in EXPECTED[view]
            ]
            assert got == [
                tuple(pytest.approx(v) if isinstance(v, float) else v for v in row) for row in want
            ], view
            assert cur.description is not None
            shape = [(c.name, conn.adapters.types.get(c.type_code).name) for c in cur.description]  # type: ignore[union-attr]
            assert shape == [(c.name, TYPES[c.name]) for c in cur.description], view
        st = collect(conn, exact=True)
        by_name = {r.relation: r for r in st.relations}
        assert by_name["samples"].rows is not None and by_name["samples"].rows >= len(ROWS)
        assert by_name["samples"].parts  # chunks (TimescaleDB) or partitions (plain)
