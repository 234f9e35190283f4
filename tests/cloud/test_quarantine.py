"""`microfleet quarantine list/replay` on a real PostgreSQL: messages quarantined by the real writer are
listed with filters and replayed with a longer late horizon through the same writer (idempotent)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from typer.testing import CliRunner

from bench._common import session_traffic, to_wire
from cloud.db.migrate import migrate
from cloud.ingest.batcher import Batcher
from cloud.ingest.quarantine_cli import app, parse_since
from cloud.ingest.writer import BatchWriter
from contract.topics import Uplink, uplink
from tests.support.services import scratch_database

NOW = datetime.now(UTC).replace(microsecond=0)
OLD = NOW - timedelta(days=40)  # beyond the horizon (plain path: the shortest retention, 30 days)


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with scratch_database() as dsn:
        migrate(dsn)
        old = [
            to_wire(m) for m in session_traffic("dev-old", start=OLD, seq0=-1, batches=2, samples_per_batch=3)
        ]
        b: Batcher[int] = Batcher(consumer="ingest-1", late_horizon=timedelta(days=16))
        for i, (t, p) in enumerate(old):
            b.add(t, p, i, now=NOW, mono=0.0)
        b.add(
            uplink("dev-bad", Uplink.EVENT),
            b'{"kind":"event","seq":0,"what\\u0000":1}',
            99,
            now=NOW,
            mono=0.0,
        )
        b.add(uplink("dev-bad", Uplink.SYNC), b"not json", 100, now=NOW, mono=0.0)
        writer = BatchWriter(dsn, consumer="ingest-1")
        try:
            writer.write_once(b.take())
        finally:
            writer.close()
        yield dsn


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def listed(dsn: str, *args: str) -> list[dict[str, object]]:
    code, out = run("list", "--json", "--database-url", dsn, *args)
    assert code == 0, out
    rows: list[dict[str, object]] = json.loads(out)  # one JSON array
    return rows


def one(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_list_filters_and_replay_with_a_longer_horizon(dsn: str) -> None:
    everything = listed(dsn)
    n_old = len(session_traffic("dev-old", start=OLD, seq0=-1, batches=2, samples_per_batch=3))
    assert len(everything) == n_old + 2
    late = listed(dsn, "--reason", "too_late")
    assert len(late) == n_old and {str(r["topic"]).split("/")[2] for r in late} == {"dev-old"}
    bad = listed(dsn, "--device", "dev-bad")
    assert {r["reason"] for r in bad} == {"schema", "not_json"}
    assert all("\\x00" in str(r["detail"]) for r in bad if r["reason"] == "schema")
    assert len(listed(dsn, "--since", "1h", "--limit", "3")) == 3
    assert (
        one(dsn, "SELECT through FROM commit_marks WHERE device_id = 'dev-old'") == n_old - 1
    )  # seqs 0..n-1
    assert one(dsn, "SELECT through FROM commit_marks WHERE device_id = 'dev-bad'") == 0

    code, out = run("replay", "--database-url", dsn, "--reason", "too_late", "--dry-run")
    assert code == 1 and f"{n_old} selected" in out and "0 would be stored" in out and "too_late: " in out
    code, out = run(
        "replay", "--database-url", dsn, "--reason", "too_late", "--late-horizon-days", "60", "--dry-run"
    )
    assert code == 0 and f"{n_old} would be stored" in out, out
    assert one(dsn, "SELECT count(*) FROM uplink_log") == 0
    assert one(dsn, "SELECT count(*) FROM quarantine WHERE replayed_at IS NOT NULL") == 0

    code, out = run("replay", "--database-url", dsn, "--reason", "too_late", "--late-horizon-days", "60")
    assert code == 0 and f"{n_old} stored" in out, out
    assert one(dsn, "SELECT count(*) FROM uplink_log WHERE device_id = 'dev-old'") == n_old
    assert one(dsn, "SELECT count(*) FROM samples WHERE device_id = 'dev-old'") == 6
    assert one(dsn, "SELECT count(*) FROM quarantine WHERE replay_result = 'stored'") == n_old
    code, out = run("replay", "--database-url", dsn, "--reason", "too_late", "--late-horizon-days", "60")
    assert code == 0 and "0 selected" in out  # stored rows are not replayed again

    code, out = run("replay", "--database-url", dsn)
    assert code == 1 and "2 selected" in out and "schema: 1" in out and "1 skipped" in out, out
    rows = {r["reason"]: r for r in listed(dsn, "--device", "dev-bad")}
    assert rows["schema"]["replay_result"] == "schema" and "unknown field" in str(
        rows["schema"]["replay_detail"]
    )
    assert rows["not_json"]["replay_result"] == "skipped"


def test_since_takes_an_age_or_an_iso_time() -> None:
    assert parse_since("2d", NOW) == NOW - timedelta(days=2)
    assert parse_since("2026-03-01T12:00", NOW) == datetime(2026, 3, 1, 12, tzinfo=UTC)
