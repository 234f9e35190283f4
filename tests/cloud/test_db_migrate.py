"""The migration runner: naming rules and planning (pure), then idempotence and concurrency against a
real PostgreSQL (scratch databases)."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from cloud.db.cli import app
from cloud.db.migrate import (
    MIGRATIONS_DIR,
    Migration,
    MigrationError,
    StoragePath,
    migrate,
    parse_name,
    plan,
    read_files,
    select_migrations,
)


def test_names_and_variants() -> None:
    assert parse_name("0001_core.sql") == ("0001_core", None)
    assert parse_name("0100_alerts.timescale.sql") == ("0100_alerts", StoragePath.TIMESCALE)
    assert parse_name("0002_x.plain.sql") == ("0002_x", StoragePath.PLAIN)
    for bad in ("core.sql", "1_core.sql", "0001-core.sql", "0001_Core.sql", "0001_core.pg.sql"):
        with pytest.raises(MigrationError, match="rename it"):
            parse_name(bad)


def test_selection_per_path_in_name_order() -> None:
    files = {
        "0100_alerts.sql": "a",
        "0002_ts.timescale.sql": "t",
        "0002_ts.plain.sql": "p",
        "0001_core.sql": "c",
    }
    assert [(m.version, m.sql) for m in select_migrations(files, StoragePath.PLAIN)] == [
        ("0001_core", "c"),
        ("0002_ts", "p"),
        ("0100_alerts", "a"),
    ]
    assert [m.sql for m in select_migrations(files, StoragePath.TIMESCALE)] == ["c", "t", "a"]
    with pytest.raises(MigrationError, match=r"needs both a \.timescale\.sql and a \.plain\.sql"):
        select_migrations({"0003_x.timescale.sql": ""}, StoragePath.PLAIN)
    with pytest.raises(MigrationError, match="both a shared file and path variants"):
        select_migrations(
            {"0003_x.sql": "", "0003_x.plain.sql": "", "0003_x.timescale.sql": ""}, StoragePath.PLAIN
        )


def test_plan_skips_applied_and_refuses_edited() -> None:
    a, b = Migration("0001_a", "select 1", "0001_a.sql"), Migration("0002_b", "select 2", "0002_b.sql")
    assert plan([a, b], {}) == [a, b]
    assert plan([a, b], {"0001_a": a.checksum}) == [b]
    with pytest.raises(MigrationError, match="changed after it was applied"):
        plan([a, b], {"0001_a": b.checksum})


def test_shipped_migrations_are_valid_on_both_paths() -> None:
    files = read_files(MIGRATIONS_DIR)
    for path in StoragePath:
        versions = [m.version for m in select_migrations(files, path)]
        assert versions[:3] == ["0001_core", "0002_timeseries", "0003_rollups"]


def test_migrate_is_idempotent(database_url: str) -> None:
    first = migrate(database_url)
    assert first[:3] == ["0001_core", "0002_timeseries", "0003_rollups"]
    assert migrate(database_url) == []
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("select version, path from schema_migrations order by version").fetchall()
        assert rows == [(v, "plain") for v in first]  # no TimescaleDB on the test server: plain path
        with pytest.raises(MigrationError, match="cannot switch"):
            migrate(database_url, path=StoragePath.TIMESCALE)


def test_concurrent_migrations_apply_each_version_once(database_url: str) -> None:
    barrier = threading.Barrier(2)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(migrate(database_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    applied = sorted(results, key=len)
    assert applied[0] == [] and applied[1][:3] == ["0001_core", "0002_timeseries", "0003_rollups"]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select count(*) from schema_migrations").fetchone() == (len(applied[1]),)


def test_failed_migration_rolls_back_and_says_which(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("create table ok_table (id int);")
    (tmp_path / "0002_bad.sql").write_text("create table half (id int); select * from no_such_table;")
    with pytest.raises(MigrationError, match=r"0002_bad\.sql failed"):
        migrate(database_url, directory=tmp_path)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select version from schema_migrations").fetchall() == [("0001_ok",)]
        assert conn.execute("select to_regclass('half')").fetchone() == (None,)


def test_cli_creates_database_and_migrates(database_url: str) -> None:
    target = database_url + "_cli"  # does not exist yet: `db migrate` creates it
    runner = CliRunner()
    try:
        out = runner.invoke(app, ["migrate", "--database-url", target])
        assert out.exit_code == 0, out.output
        assert (
            "created database" in out.output
            and "applied 0001_core" in out.output
            and "plain path" in out.output
        )
        out = runner.invoke(app, ["status", "--database-url", target, "--exact"])
        assert out.exit_code == 0, out.output
        assert "0003_rollups" in out.output and "samples" in out.output and "partitions" in out.output
        out = runner.invoke(app, ["maintain", "--database-url", target])
        assert out.exit_code == 0, out.output
    finally:
        with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f'drop database if exists "{target.rsplit("/", 1)[1]}" with (force)')


def test_cli_unreachable_database_exits_with_advice() -> None:
    from tests.support.services import free_port

    out = CliRunner().invoke(
        app, ["migrate", "--database-url", f"postgresql://postgres@127.0.0.1:{free_port()}/x"]
    )
    assert out.exit_code == 1
    assert "MICROFLEET_DATABASE_URL" in out.output and "Start PostgreSQL" in out.output
