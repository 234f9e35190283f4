"""The ingest writer against a real scratch PostgreSQL (migrated with cloud.db.migrate): idempotent
writes, session merge in either order, device status ordering, rows the database refuses."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from bench._common import session_traffic, to_wire
from cloud.db.migrate import migrate
from cloud.ingest.batcher import Batch, Batcher
from cloud.ingest.writer import BatchWriter
from contract.messages import DeviceEvent, DeviceState, EventType, Status, UplinkMessage
from tests.support.services import scratch_database

NOW = datetime.now(UTC).replace(microsecond=0)
START = NOW - timedelta(hours=1)
TABLES = ("samples", "sessions", "device_events", "uplink_log", "devices", "quarantine")


@pytest.fixture(scope="module")
def migrated() -> Iterator[str]:
    with scratch_database() as dsn:
        migrate(dsn)
        yield dsn


@pytest.fixture
def dsn(migrated: str) -> str:
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    return migrated


def batch_of(messages: list[UplinkMessage] | list[tuple[str, bytes]]) -> Batch[int]:
    b: Batcher[int] = Batcher(consumer="w1", max_messages=10**6)
    for i, m in enumerate(messages):
        topic, payload = m if isinstance(m, tuple) else to_wire(m)
        b.add(topic, payload, i, now=datetime.now(UTC), mono=0.0)
    return b.take()


def isolate(topic: str, payload: bytes) -> Batch[Any]:
    return batch_of([(topic, payload)])


@pytest.fixture
def writer(dsn: str) -> Iterator[BatchWriter]:
    w = BatchWriter(dsn, consumer="w1", isolate=isolate)
    yield w
    w.close()


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # type: ignore[index]


@pytest.mark.parametrize("strategy", ["copy", "stage"])
def test_writing_the_same_batch_again_stores_nothing_twice(
    dsn: str, writer: BatchWriter, strategy: str
) -> None:
    writer.strategy = strategy  # type: ignore[assignment]
    msgs = session_traffic("dev-a", start=START, batches=4, samples_per_batch=5)
    msgs += session_traffic("dev-b", start=START, batches=2, samples_per_batch=5)
    result = writer.write(batch_of(msgs))
    assert result is not None and result.samples == 30
    first = counts(dsn)
    assert first == {
        "samples": 30,
        "sessions": 2,
        "device_events": 2,
        "uplink_log": 14,
        "devices": 2,
        "quarantine": 0,
    }
    writer.write(batch_of(msgs))  # a redelivery of everything
    writer.write(batch_of(msgs[3:9]))  # and of a part, mixed with new data below
    writer.write(batch_of(msgs[5:] + session_traffic("dev-c", start=START, batches=1, samples_per_batch=5)))
    assert counts(dsn) == {
        **first,
        "samples": 35,
        "sessions": 3,
        "device_events": 3,
        "uplink_log": 19,
        "devices": 3,
    }


def test_session_end_before_start_and_twice_merges_into_one_row(dsn: str, writer: BatchWriter) -> None:
    msgs = session_traffic("dev-a", start=START, batches=1, samples_per_batch=2, with_events=False)
    start, end = msgs[1], msgs[-1]
    for m in (end, start, end, start):
        writer.write(batch_of([m]))
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT tz_offset_min, level_start, level_max, end_reason, zones FROM sessions"
        ).fetchall()
    assert rows == [(0, 2, 3, "user", [])]


def test_older_status_never_overwrites_a_newer_one(dsn: str, writer: BatchWriter) -> None:
    birth = Status(device_id="d", seq=9, ts=START, state=DeviceState.ONLINE, fw_version="2.0")
    will = Status(device_id="d", seq=9, ts=START, state=DeviceState.OFFLINE)
    old = Status(
        device_id="d", seq=2, ts=START - timedelta(hours=1), state=DeviceState.ONLINE, fw_version="1.0"
    )
    writer.write(batch_of([birth]))
    writer.write(batch_of([will]))
    writer.write(batch_of([old]))
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT state, fw_version, last_seq, last_seen FROM devices").fetchone()
    assert row == ("offline", "", 9, START)


def test_a_row_the_database_refuses_is_quarantined_and_the_rest_of_the_batch_commits(
    dsn: str, writer: BatchWriter
) -> None:
    good = session_traffic("dev-a", start=START, batches=2, samples_per_batch=3)
    # valid for the contract, but PostgreSQL text cannot hold a NUL character
    bad = DeviceEvent(
        device_id="dev-b", seq=1, ts=START, event=EventType.LEVEL_CHANGE, at=START, detail="a\x00b"
    )
    result = writer.write(batch_of([*good, bad]))
    assert result is not None and result.quarantined == 1
    c = counts(dsn)
    assert c["samples"] == 6 and c["uplink_log"] == len(good) and c["quarantine"] == 1
    with psycopg.connect(dsn) as conn:
        reason, detail, topic = conn.execute("SELECT reason, detail, topic FROM quarantine").fetchone()  # type: ignore[misc]
    assert reason == "out_of_range" and "database refused" in detail and topic.endswith("/dev-b/up/event")
