"""The ingest writer against a real scratch PostgreSQL (migrated with cloud.db.migrate): idempotent
writes, session merge in either order, device status ordering, rows the database refuses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from bench._common import session_traffic, to_wire
from cloud.db.migrate import migrate
from cloud.ingest.batcher import Batch, Batcher
from cloud.ingest.writer import BatchWriter, is_transient
from contract.codec import encode
from contract.messages import DeviceEvent, DeviceState, EventType, Status, SyncRequest, UplinkMessage
from contract.topics import Uplink, uplink
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
        conn.execute(f"TRUNCATE {', '.join(TABLES)}, commit_marks, commit_receipts")
    return migrated


def batch_of(messages: Sequence[UplinkMessage | tuple[str, bytes]]) -> Batch[int]:
    b: Batcher[int] = Batcher(consumer="w1", max_messages=10**6)
    for i, m in enumerate(messages):
        topic, payload = m if isinstance(m, tuple) else to_wire(m)
        b.add(topic, payload, i, now=datetime.now(UTC), mono=0.0)
    return b.take()


@pytest.fixture
def writer(dsn: str) -> Iterator[BatchWriter]:
    w = BatchWriter(dsn, consumer="w1")
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


def mark_of(dsn: str, device: str) -> tuple[int, bool] | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT through, requested FROM commit_marks WHERE device_id = %s", (device,)
        ).fetchone()
    return None if row is None else (int(row[0]), bool(row[1]))


def event(device: str, seq: int, detail: str = "") -> DeviceEvent:
    return DeviceEvent(device_id=device, seq=seq, ts=START, event=EventType.BOOST, at=START, detail=detail)


def test_a_schema_error_whose_text_has_a_nul_is_quarantined_and_the_batch_commits(
    dsn: str, writer: BatchWriter
) -> None:
    """The reproduction: the unknown field's name (a JSON key with \\u0000) is in msgspec's error text; the
    quarantine COPY refused it and the writer retried the batch forever."""
    good = [event("dev-q", 0), event("dev-q", 2)]
    payload = encode(event("dev-q", 1))[:-1] + b',"bad\\u0000key":1}'
    batch = batch_of([to_wire(good[0]), (uplink("dev-q", Uplink.EVENT), payload), to_wire(good[1])])
    assert "\x00" not in batch.quarantine[0][4] and "\\x00" in batch.quarantine[0][4]
    result = writer.write_once(batch)  # one attempt: no retry hides a failure
    assert result.quarantined == 1 and counts(dsn)["device_events"] == 2
    with psycopg.connect(dsn) as conn:
        (detail,) = conn.execute("SELECT detail FROM quarantine").fetchone()  # type: ignore[misc]
    assert "unknown field" in detail and "bad\\x00key" in detail
    assert mark_of(dsn, "dev-q") == (2, False)  # the quarantined seq 1 has its receipt


def test_a_value_the_server_refuses_is_isolated_and_500_good_messages_commit(
    dsn: str, writer: BatchWriter
) -> None:
    msgs = [event("dev-big", s, "refuse-me" if s == 250 else "ok") for s in range(501)]
    with psycopg.connect(dsn, autocommit=True) as conn:  # a refusal by the server itself (23514)
        conn.execute("ALTER TABLE device_events ADD CONSTRAINT test_refuse CHECK (detail <> 'refuse-me')")
    try:
        result = writer.write_once(batch_of(msgs))
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE device_events DROP CONSTRAINT test_refuse")
    assert result.quarantined == 1 and len(result.refused) == 1
    c = counts(dsn)
    assert c["device_events"] == 500 and c["uplink_log"] == 500 and c["quarantine"] == 1
    with psycopg.connect(dsn) as conn:
        reason, detail = conn.execute("SELECT reason, detail FROM quarantine").fetchone()  # type: ignore[misc]
    assert reason == "out_of_range" and "test_refuse" in detail
    assert mark_of(dsn, "dev-big") == (500, False)


def test_a_quarantine_row_that_is_still_refused_is_stored_as_minimal_ascii(
    dsn: str, writer: BatchWriter
) -> None:
    payload = b"\xff\x00 raw"
    batch: Batch[int] = Batch(
        quarantine=[("mf/v1/x/up/status\x00\ud800", payload, b"h" * 32, "schema", "why\x00", "c")], acks=[1]
    )
    result = writer.write_once(batch)  # bypassing the batcher's cleaning: the row itself is refused
    assert result.quarantined == 1
    with psycopg.connect(dsn) as conn:
        topic, stored, detail = conn.execute("SELECT topic, payload, detail FROM quarantine").fetchone()  # type: ignore[misc]
    assert topic == "mf/v1/x/up/status\\x00\\ud800" and stored == payload and "why\\x00" in detail


def test_syncs_move_marks_in_the_batch_transaction_and_marks_can_be_off(
    dsn: str, writer: BatchWriter
) -> None:
    sync = SyncRequest(device_id="dev-s", ts=START, floor=5, next_seq=9)
    bad_sync = (uplink("dev-t", Uplink.SYNC), b'{"kind":"sync","seq":3}')
    batch = batch_of(
        [
            to_wire(event("dev-s", 6)),
            (uplink("dev-s", Uplink.SYNC), encode(sync)),
            bad_sync,
            to_wire(event("dev-s", 5)),
        ]
    )
    assert batch.syncs == [("dev-s", 5, 9, "")] and len(batch.quarantine) == 1
    result = writer.write_once(batch)
    assert result.syncs == 1 and result.marks_advanced == 1 and result.messages == 4
    assert mark_of(dsn, "dev-s") == (6, True) and mark_of(dsn, "dev-t") is None
    off = BatchWriter(dsn, consumer="w2", marks=False)
    try:
        off.write_once(batch_of([event("dev-off", 0)]))
    finally:
        off.close()
    assert mark_of(dsn, "dev-off") is None and counts(dsn)["device_events"] == 3


def test_errors_are_transient_only_when_the_database_cannot_take_any_batch() -> None:
    from psycopg import errors as e

    assert is_transient(psycopg.OperationalError("connection lost")) and is_transient(OSError())
    for cls in (e.DeadlockDetected, e.SerializationFailure, e.AdminShutdown, e.ReadOnlySqlTransaction):
        assert cls.sqlstate is not None and is_transient(cls("x"))
    for data in (e.CheckViolation, e.UntranslatableCharacter, e.InternalError_, e.SyntaxError):
        assert not is_transient(data("x"))
    assert not is_transient(psycopg.DataError("NUL in a text")) and not is_transient(ValueError())
