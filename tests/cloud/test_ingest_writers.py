"""Several writer threads in one ingest process (MICROFLEET_INGEST_WRITERS): they really commit batches
concurrently, and under a flood with redelivered duplicates every row, receipt and commit mark stays exact."""

from __future__ import annotations

import dataclasses
import random

import psycopg
import pytest

from bench._common import fleet_traffic, wait_until
from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from tests.cloud.test_ingest_e2e import config, count, publisher, running
from tests.support.services import Mosquitto

pytestmark = pytest.mark.slow


@pytest.fixture
def dsn(database_url: str) -> str:
    migrate(database_url)
    return database_url


def writers(broker: Mosquitto, dsn: str, n: int, **kw: object) -> CloudConfig:
    return dataclasses.replace(config(broker, dsn, f"ingest-w{n}"), ingest_writers=n, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [1, 2])
def test_a_second_writer_commits_while_the_first_waits_in_its_transaction(
    broker: Mosquitto, dsn: str, n: int
) -> None:
    """The test holds device a's commit-mark row locked: the batch with a's messages waits inside its
    transaction (after its COPY, at the mark lock). With two writers, b's batch commits meanwhile, and
    pg_stat_activity shows both writer connections in a transaction at once; with one it cannot."""
    a = fleet_traffic(1, 1, batches=2, prefix="wa", first_seq=0)
    b = fleet_traffic(1, 1, batches=2, prefix="wb", first_seq=0)
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute("INSERT INTO commit_marks (device_id) VALUES ('wa-0')")
    cfg = writers(broker, dsn, n, batch_max_delay_s=0.2)  # a's messages: one batch
    holder = psycopg.connect(dsn)
    watch = psycopg.connect(dsn, autocommit=True)  # pg_stat_activity is a snapshot per transaction

    def writers_waiting() -> int:
        row = watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'microfleet-ingest' "
            "AND datname = current_database() AND state = 'active' AND wait_event_type = 'Lock'"
        ).fetchone()
        return int(row[0]) if row else 0

    try:
        holder.execute("SELECT * FROM commit_marks WHERE device_id = 'wa-0' FOR UPDATE")
        with running(cfg) as (svc,), publisher(broker) as pub:
            try:
                pub.publish_all(a.messages)
                wait_until(lambda: writers_waiting() == 1, 10, interval=0.01, what="a's writer waits")
                pub.publish_all(b.messages)
                if n == 1:
                    with pytest.raises(TimeoutError):
                        wait_until(lambda: count(dsn, "uplink_log") > 0, 1.5, interval=0.05, what="b stored")
                else:
                    wait_until(
                        lambda: count(dsn, "uplink_log") == b.uplinks, 10, interval=0.01, what="b committed"
                    )
                    # a's transaction is still open, waiting: the two writers' transactions overlapped
                    assert writers_waiting() == 1
            finally:
                holder.rollback()  # never leave a writer blocked in the database at stop
            total = a.uplinks + b.uplinks
            wait_until(lambda: count(dsn, "uplink_log") == total, 20, interval=0.02, what="all stored")
            wait_until(lambda: svc.handoff.pending() == 0, 10, what="nothing pending")
    finally:
        holder.close()
        watch.close()
    with psycopg.connect(dsn) as conn:
        got: dict[str, int] = dict(conn.execute("SELECT device_id, through FROM commit_marks").fetchall())
    assert got == {"wa-0": a.uplinks - 1, "wb-0": b.uplinks - 1}


def test_two_writers_under_a_flood_with_duplicates_keep_rows_receipts_and_marks_exact(
    broker: Mosquitto, dsn: str
) -> None:
    """Small batches (many racing commits on both connections); a third of the messages published twice,
    the copies shuffled among later traffic (a redelivery's unique violation, concurrent with the other
    writer's COPY of the same keys)."""
    traffic = fleet_traffic(40, 2, batches=4, samples_per_batch=10, first_seq=0)
    rng = random.Random(13)
    flood = list(traffic.messages)
    for m in rng.sample(traffic.messages, len(traffic.messages) // 3):
        flood.insert(rng.randrange(flood.index(m) + 1, len(flood) + 1), m)
    cfg = writers(broker, dsn, 2, batch_max_messages=25, batch_max_delay_s=0.005)
    with running(cfg) as (svc,), publisher(broker) as pub:
        pub.publish_all(flood)
        wait_until(lambda: count(dsn, "uplink_log") >= traffic.uplinks, 60, what="all messages stored")
        wait_until(lambda: svc.handoff.pending() == 0, 10, what="nothing pending")
        batches = svc.stats.batches
    assert batches >= 2  # a batch takes what is pending: its size grows while both writers are busy
    with psycopg.connect(dsn) as conn:
        got = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in ("samples", "sessions", "device_events", "uplink_log", "devices", "quarantine")
        }
        gaps = conn.execute(
            "SELECT device_id FROM uplink_log GROUP BY device_id HAVING count(*) <> max(seq) + 1 OR min(seq) <> 0"
        ).fetchall()
        marks: dict[str, int] = dict(conn.execute("SELECT device_id, through FROM commit_marks").fetchall())
        receipts = conn.execute("SELECT count(*) FROM commit_receipts").fetchone()
        last: dict[str, int] = dict(
            conn.execute("SELECT device_id, max(seq) FROM uplink_log GROUP BY device_id").fetchall()
        )
    assert got == {
        "samples": traffic.samples,
        "sessions": traffic.sessions,
        "device_events": traffic.events,
        "uplink_log": traffic.uplinks,
        "devices": traffic.devices,
        "quarantine": 0,
    }
    assert gaps == []
    assert marks == last and len(marks) == traffic.devices
    assert receipts == (0,)
