"""Ingest benchmark: microfleet end to end next to its two ceilings, in one run on this machine.

    python bench/ingest.py [--quick] [--messages N] [--samples-per-message S]

(a) raw broker: the same payloads, a paho publisher process -> mosquitto (project config) -> a bare paho
    subscriber (QoS 1), messages/s;
(b) raw database: the same sample rows, binary COPY into the same `samples` table the ingest writes
    (its natural-key primary key, partitions or chunks, BRIN index and rollup trigger), rows/s: what a
    perfect consumer could store. For context it also prints COPY into a bare heap table (no index, no
    partition), which shows what the schema itself costs, and the ingest writer alone (both strategies);
(c) end to end: publisher process -> broker -> `python -m cloud.ingest` process(es) -> committed rows,
    with 1 and 2 consumer processes; loss counted from the database (uplink_log and samples);
(d) the end-to-end acknowledgement's cost: the same run with 2 consumers and the commit marks off
    (MICROFLEET_COMMIT_MARKS=false: no receipts, no marks), and the writer alone with and without them;
    the marks (CommitMark downlinks) counted by a subscriber on mf/v1/+/down/committed, per device and
    per 1,000 uplinks, with the production mark policy (MICROFLEET_MARK_DELAY_S, MICROFLEET_MARK_EVERY).
Its own broker and a scratch database; the last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench._common import (  # noqa: E402
    IngestProcess,
    Message,
    fleet_traffic,
    publish_in_child,
    raw_broker_rate,
    wait_until,
)
from cloud.config import CloudConfig  # noqa: E402
from cloud.db.migrate import migrate  # noqa: E402
from cloud.ingest.batcher import Batch, Batcher  # noqa: E402
from cloud.ingest.tables import SAMPLES  # noqa: E402
from cloud.ingest.writer import BatchWriter  # noqa: E402
from tests.support.services import Mosquitto, scratch_database  # noqa: E402

console = Console(stderr=False)
TABLES = (
    "samples",
    "sessions",
    "device_events",
    "uplink_log",
    "devices",
    "quarantine",
    "rollup_pending",
    "commit_marks",
    "commit_receipts",
)
MARK_DELAY_S = CloudConfig().mark_delay_s  # the production default, which the e2e runs use
MARK_EVERY = CloudConfig().mark_every


def sample_batches(messages: list[Message], per_batch: int) -> list[Batch[int]]:
    now = datetime.now(UTC)
    out = []
    for i in range(0, len(messages), per_batch):
        b: Batcher[int] = Batcher(consumer="bench", max_messages=10**9)
        for j, (t, p) in enumerate(messages[i : i + per_batch]):
            b.add(t, p, j, now=now, mono=0.0)
        out.append(b.take())
    return out


def copy_rate(conn: psycopg.Connection[Any], target: str, batches: list[Batch[int]]) -> float:
    """Binary COPY of the batches' sample rows into `target`, one COPY and commit per batch: rows/s."""
    t0 = time.perf_counter()
    for b in batches:
        with conn.cursor().copy(SAMPLES.copy_into(target)) as copy:
            copy.set_types(list(SAMPLES.types))
            for r in b.samples:
                copy.write_row(r)
        conn.commit()
    return sum(len(b.samples) for b in batches) / (time.perf_counter() - t0)


def raw_copy_rate(dsn: str, batches: list[Batch[int]]) -> float:
    """The same sample rows, binary COPY into a plain table (no index, no partitions), one COPY per batch."""
    cols = ", ".join(f"{c} {t}" for c, t in zip(SAMPLES.columns, SAMPLES.types, strict=True))
    with psycopg.connect(dsn) as conn:
        conn.execute(f"CREATE TABLE bench_raw_samples ({cols})")
        conn.commit()
        rate = copy_rate(conn, "bench_raw_samples", batches)
        conn.execute("DROP TABLE bench_raw_samples")
        conn.commit()
    return rate


def schema_copy_rate(dsn: str, batches: list[Batch[int]]) -> float:
    """The same rows, binary COPY into the real `samples` (partitioned, natural-key primary key, rollup
    trigger): what the schema itself costs, before any idempotency or MQTT."""
    truncate(dsn)
    with psycopg.connect(dsn) as conn:
        return copy_rate(conn, "samples", batches)


def truncate(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)}")


def writer_rate(dsn: str, batches: list[Batch[int]], strategy: str, marks: bool = True) -> float:
    truncate(dsn)
    w = BatchWriter(dsn, consumer="bench", strategy=strategy, marks=marks)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    for b in batches:
        w.write(b)
    elapsed = time.perf_counter() - t0
    w.close()
    return sum(len(b.samples) for b in batches) / elapsed


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES[:5]}  # type: ignore[index]


class MarkCounter:
    """A bare subscriber on every device's commit-mark topic: counts the CommitMark downlinks."""

    def __init__(self, port: int) -> None:
        self.count = 0
        self.devices: set[str] = set()
        ready = threading.Event()

        def on_message(_c: Any, _u: Any, m: Any) -> None:
            self.count += 1
            self.devices.add(m.topic.split("/")[2])

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-marks", protocol=mqtt.MQTTv5)
        self.client.on_message = on_message
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_connect = lambda c, *a: c.subscribe("mf/v1/+/down/committed", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the mark counter could not subscribe")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def e2e_rate(
    broker: Mosquitto,
    dsn: str,
    messages: list[Message],
    consumers: int,
    expected_samples: int,
    *,
    marks: bool = True,
) -> dict[str, float]:
    truncate(dsn)
    env = {"MICROFLEET_COMMIT_MARKS": "true" if marks else "false"}
    procs = [IngestProcess(broker.url, dsn, f"bench-ingest-{i}", **env) for i in range(1, consumers + 1)]
    counter = MarkCounter(broker.port)
    try:
        for p in procs:
            wait_until(p.subscribed, 30, what="consumer subscribed")
        t0 = time.perf_counter()
        child = publish_in_child(broker.url, messages, f"bench-e2e-pub-{consumers}-{int(marks)}")
        with psycopg.connect(dsn, autocommit=True) as conn:

            def stored() -> bool:
                row = conn.execute("SELECT count(*) FROM uplink_log").fetchone()
                return row is not None and row[0] >= len(messages)

            with contextlib.suppress(TimeoutError):  # a shortfall is reported as loss below
                wait_until(stored, 170, interval=0.02, what="all messages committed")
        elapsed = time.perf_counter() - t0
        child.join(30)
        if marks:  # the last marks leave after the mark delay: count them too
            time.sleep(MARK_DELAY_S + 2.0)
    finally:
        for p in procs:
            p.signal(signal.SIGTERM)
        counter.close()
    c = counts(dsn)
    return {
        "messages_per_s": c["uplink_log"] / elapsed,
        "samples_per_s": c["samples"] / elapsed,
        "loss": (len(messages) - c["uplink_log"]) + (expected_samples - c["samples"]),
        "seconds": elapsed,
        "marks": counter.count,
        "marked_devices": len(counter.devices),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a fast run (fewer messages)")
    ap.add_argument(
        "--messages", type=int, default=0, help="uplink messages per run (default 24000, quick 6000)"
    )
    ap.add_argument("--samples-per-message", type=int, default=30)
    args = ap.parse_args()
    target = args.messages or (6000 if args.quick else 24000)
    per_session = 3 + 6  # status, start, 6 sample batches, event, end -> 10 messages; 6 carry samples
    devices = max(1, target // (per_session + 1) // 4)
    traffic = fleet_traffic(devices, 4, batches=6, samples_per_batch=args.samples_per_message, first_seq=0)
    msgs = traffic.messages
    console.rule(f"[bold]microfleet ingest benchmark[/] - {len(msgs)} messages, {traffic.samples} samples")
    results: dict[str, Any] = {}
    broker = Mosquitto()
    broker.start()
    try:
        with scratch_database("mf_bench") as dsn:
            migrate(dsn)
            console.print("(a) raw broker ...")
            results["broker_msgs_per_s"] = raw_broker_rate(broker.port, broker.url, msgs)
            batches = sample_batches(msgs, 2000)
            console.print("(b) raw COPY ...")
            results["copy_rows_per_s"] = raw_copy_rate(dsn, batches)
            results["schema_copy_rows_per_s"] = schema_copy_rate(dsn, batches)
            for strategy in ("copy", "stage"):
                results[f"writer_{strategy}_rows_per_s"] = writer_rate(dsn, batches, strategy)
            results["writer_copy_nomarks_rows_per_s"] = writer_rate(dsn, batches, "copy", marks=False)
            for n in (1, 2):
                console.print(f"(c) end to end, {n} consumer process(es) ...")
                results[f"e2e_{n}"] = e2e_rate(broker, dsn, msgs, n, traffic.samples)
            for n in (1, 2):
                console.print(f"(d) end to end, {n} consumer process(es), commit marks off ...")
                results[f"e2e_{n}_nomarks"] = e2e_rate(broker, dsn, msgs, n, traffic.samples, marks=False)
    finally:
        broker.close()
    best = max((results["e2e_1"], results["e2e_2"]), key=lambda r: r["samples_per_s"])
    spm = traffic.samples / len(msgs)
    table = Table(title=f"ingest on {platform.node()} ({os.cpu_count()} cores), {spm:.1f} samples/message")
    for col in ("figure", "value", "ceiling", "ratio"):
        table.add_column(col, justify="right" if col != "figure" else "left")
    broker_rate, heap_rate = results["broker_msgs_per_s"], results["copy_rows_per_s"]
    copy_rate = results["schema_copy_rows_per_s"]
    table.add_row("(a) raw broker, paho pub -> mosquitto -> paho sub", f"{broker_rate:,.0f} msg/s", "", "")
    table.add_row("(b) raw binary COPY into the samples table", f"{copy_rate:,.0f} rows/s", "", "")
    table.add_row(
        "    for context: COPY into a bare heap table",
        f"{heap_rate:,.0f} rows/s",
        "(b)",
        f"{heap_rate / copy_rate:.2f}",
    )
    for s in ("copy", "stage"):
        v = results[f"writer_{s}_rows_per_s"]
        table.add_row(
            f"    ingest writer alone, strategy {s}", f"{v:,.0f} rows/s", "(b)", f"{v / copy_rate:.2f}"
        )
    for n in (1, 2):
        r = results[f"e2e_{n}"]
        table.add_row(
            f"(c) e2e {n} consumer(s), messages",
            f"{r['messages_per_s']:,.0f} msg/s",
            "(a)",
            f"{r['messages_per_s'] / broker_rate:.2f}",
        )
        table.add_row(
            f"(c) e2e {n} consumer(s), samples",
            f"{r['samples_per_s']:,.0f} rows/s",
            "(b)",
            f"{r['samples_per_s'] / copy_rate:.2f}",
        )
        table.add_row(f"(c) e2e {n} consumer(s), loss", str(r["loss"]), "0", "")
    on = best
    off = max((results["e2e_1_nomarks"], results["e2e_2_nomarks"]), key=lambda r: r["samples_per_s"])
    w_on, w_off = results["writer_copy_rows_per_s"], results["writer_copy_nomarks_rows_per_s"]
    table.add_row("(d) writer alone, marks off", f"{w_off:,.0f} rows/s", "(b)", f"{w_off / copy_rate:.2f}")
    table.add_row("(d) writer alone, marks on", f"{w_on:,.0f} rows/s", "marks off", f"{w_on / w_off:.2f}")
    for n in (1, 2):
        r = results[f"e2e_{n}_nomarks"]
        table.add_row(
            f"(d) e2e {n} consumer(s), marks off, samples",
            f"{r['samples_per_s']:,.0f} rows/s",
            "(b)",
            f"{r['samples_per_s'] / copy_rate:.2f}",
        )
    table.add_row(
        "(d) e2e best with marks / best without",
        f"{on['samples_per_s']:,.0f} rows/s",
        "marks off",
        f"{on['samples_per_s'] / off['samples_per_s']:.2f}",
    )
    per_1000 = 1000 * on["marks"] / len(msgs)
    per_device = on["marks"] / traffic.devices
    table.add_row(
        f"(d) commit marks sent (delay {MARK_DELAY_S:g} s, every {MARK_EVERY})",
        f"{on['marks']:,} = {per_device:.1f}/device",
        "per 1,000 uplinks",
        f"{per_1000:.1f}",
    )
    table.add_row(
        "(d) e2e marks off, loss",
        str(results["e2e_1_nomarks"]["loss"] + results["e2e_2_nomarks"]["loss"]),
        "0",
        "",
    )
    console.print(table)
    console.print(
        f"A device in a session sends one message every ~{args.samples_per_message} s (1 Hz samples): with "
        f"the {MARK_DELAY_S:g} s mark delay it gets at most one mark per {MARK_DELAY_S:g} s while it sends "
        f"(<= {3600 / MARK_DELAY_S:.0f} an hour of active use) and one per {MARK_EVERY} messages of a "
        "backlog; this burst run gives each device its marks by count and one after the delay."
    )
    summary = {
        "messages": len(msgs),
        "samples": traffic.samples,
        "broker_msgs_per_s": round(broker_rate),
        "copy_rows_per_s": round(copy_rate),
        "heap_copy_rows_per_s": round(heap_rate),
        "writer_copy_rows_per_s": round(results["writer_copy_rows_per_s"]),
        "writer_stage_rows_per_s": round(results["writer_stage_rows_per_s"]),
        "e2e_1_samples_per_s": round(results["e2e_1"]["samples_per_s"]),
        "e2e_2_samples_per_s": round(results["e2e_2"]["samples_per_s"]),
        "samples_per_s": round(best["samples_per_s"]),
        "messages_per_s": round(best["messages_per_s"]),
        "ratio_e2e_to_copy": round(best["samples_per_s"] / copy_rate, 3),
        "ratio_e2e_to_heap_copy": round(best["samples_per_s"] / heap_rate, 3),
        "ratio_e2e_to_broker": round(best["messages_per_s"] / broker_rate, 3),
        "loss": int(sum(results[k]["loss"] for k in ("e2e_1", "e2e_2", "e2e_1_nomarks", "e2e_2_nomarks"))),
        "writer_copy_nomarks_rows_per_s": round(w_off),
        "ratio_writer_marks_on_to_off": round(w_on / w_off, 3),
        "e2e_1_nomarks_samples_per_s": round(results["e2e_1_nomarks"]["samples_per_s"]),
        "e2e_2_nomarks_samples_per_s": round(results["e2e_2_nomarks"]["samples_per_s"]),
        "ratio_e2e_marks_on_to_off": round(on["samples_per_s"] / off["samples_per_s"], 3),
        "marks_sent": int(on["marks"]),
        "marks_per_device": round(per_device, 2),
        "marks_per_1000_uplinks": round(per_1000, 2),
        "mark_delay_s": MARK_DELAY_S,
        "mark_every": MARK_EVERY,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
