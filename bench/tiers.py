"""Broker tiers, one run: the same workload through (a) mosquitto and (b) a three-node NATS cluster.

    python bench/tiers.py [--quick] [--devices 300] [--sessions 2] [--samples-per-message 10]

The workload: `--devices` devices, `--sessions` sessions each (status, start, 15 sample batches of
`--samples-per-message` samples, an event, an end), interleaved round robin, flooded at QoS 1 over MQTT
3.1.1 (what the NATS gateway speaks) by 3 publisher child processes (cloud.runtime.publisher, each
device's messages in order on one connection; on NATS one per gateway). Each tier has a fresh broker
(mosquitto with the project's configuration; tests/support/nats.py: JetStream R3 and the MQTT gateway on
every node, `ingest` durable made by cloud.runtime.nats_cli.setup) and a truncated scratch database.

For each tier:
- ceiling: a bare consumer doing nothing but acknowledging, draining the whole flood that waited for
  it: on mosquitto a paho subscriber (MQTT 5, persistent session, QoS 1, Receive Maximum as ingest's),
  on NATS a nats-py pull consumer on the `ingest` durable (fetch 500, ack each): messages/s;
- live: one `python -m cloud.ingest` process (production defaults, commit marks on) consuming while
  the publishers flood; the clock runs from the publishers' start to the last commit;
- drain: the same process held with SIGSTOP while the broker takes the flood, released with SIGCONT;
  the clock runs from the release;
stored samples/s, loss (expected minus distinct rows in the database), duplicates (rows beyond one per
natural key: the schema forbids them; and deliveries beyond one per message, from ingest's own count),
ingest CPU per 1,000 samples (/proc/<pid>/stat), and the ratios to the tier's ceiling.
(c) NATS with a fault: the live run again with the node leading `$MQTT_msgs` (and one publisher's
    gateway) SIGKILLed a third into the flood: the publishers move to the next gateway of their list and
    re-send what was not acknowledged; loss must be 0 and every message stored exactly once.
The last printed line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench._common import (  # noqa: E402
    IngestProcess,
    Message,
    cpu_seconds,
    fleet_traffic,
    wait_until,
)
from cloud.db.migrate import migrate  # noqa: E402
from tests.support.nats import NatsCluster  # noqa: E402
from tests.support.services import Mosquitto, scratch_database  # noqa: E402

console = Console(width=150)
PUBLISHERS = 3
RECEIVE_MAXIMUM = 8000  # ingest's default (MICROFLEET_RECEIVE_MAXIMUM): the bare subscriber gets the same
FLOOD_TIMEOUT_S = 170.0
TABLES = ("samples", "sessions", "device_events", "uplink_log", "devices", "quarantine", "commit_marks")


# -- the publishers -------------------------------------------------------------------------------------
def _publish_child(url: str, messages: list[Message], client_id: str) -> None:
    """Publish every message at QoS 1 over MQTT 3.1.1 until each is acknowledged; what a lost connection
    left unacknowledged is sent again after the client moved to the next URL (at least once)."""
    from cloud.runtime.publisher import Outgoing, Publisher

    pub = Publisher(url, client_id, inflight=1000, version="3.1.1")
    pub.start()
    pending = [Outgoing(t, p) for t, p in messages]
    deadline = time.monotonic() + FLOOD_TIMEOUT_S
    while pending and time.monotonic() < deadline:
        if not pub.wait_connected(1.0):
            continue
        failed: list[Outgoing] = []
        for part in (pending[i : i + 2000] for i in range(0, len(pending), 2000)):
            outcomes = pub.publish_many(part, 15.0)
            failed += [m for m, o in zip(part, outcomes, strict=True) if not o.accepted]
        pending = failed
    pub.stop()
    sys.exit(1 if pending else 0)


def flood(urls: list[str], messages: list[Message], tag: str) -> list[mp.process.BaseProcess]:
    """PUBLISHERS children; child k publishes the devices d with d % PUBLISHERS == k to urls[k]."""
    parts: list[list[Message]] = [[] for _ in range(PUBLISHERS)]
    for topic, payload in messages:
        parts[int(topic.split("/")[2].rsplit("-", 1)[1]) % PUBLISHERS].append((topic, payload))
    ctx = mp.get_context("fork")
    procs: list[mp.process.BaseProcess] = [
        ctx.Process(target=_publish_child, args=(urls[k], parts[k], f"{tag}-pub-{k}"), daemon=True)
        for k in range(PUBLISHERS)
    ]
    for p in procs:
        p.start()
    return procs


def join_all(procs: list[mp.process.BaseProcess]) -> None:
    for p in procs:
        p.join(FLOOD_TIMEOUT_S + 10)
        if p.exitcode != 0:
            raise RuntimeError(f"a publisher failed (exit {p.exitcode}): not every message was acknowledged")


# -- the database ---------------------------------------------------------------------------------------
def truncate(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)}")


def stored(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM uplink_log").fetchone()
    return 0 if row is None else int(row[0])


def tally(dsn: str) -> dict[str, int]:
    """Rows and distinct natural keys of uplink_log and samples."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM uplink_log), (SELECT count(DISTINCT (device_id, seq)) FROM uplink_log),"
            " (SELECT count(*) FROM samples), (SELECT count(DISTINCT (device_id, ts)) FROM samples)"
        ).fetchone()
    assert row is not None
    return {"uplinks": row[0], "uplinks_distinct": row[1], "samples": row[2], "samples_distinct": row[3]}


# -- one ingest run -------------------------------------------------------------------------------------
def ingest_run(
    *,
    mode: str,
    dsn: str,
    env: dict[str, str],
    mqtt_url: str,
    pub_urls: list[str],
    messages: list[Message],
    samples: int,
    tag: str,
    fault: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """`mode` live or drain; `fault` runs (in a thread) a third into the flood."""
    truncate(dsn)
    proc = IngestProcess(mqtt_url, dsn, f"{tag}-ingest", **env)
    try:
        proc.wait_subscribed(30)
        pid = proc.proc.pid
        if mode == "drain":
            os.kill(pid, signal.SIGSTOP)
        cpu0 = cpu_seconds(pid)
        t0 = flood_t0 = time.perf_counter()
        pubs = flood(pub_urls, messages, tag)
        faulted: threading.Thread | None = None
        with psycopg.connect(dsn, autocommit=True) as conn:
            if fault is not None:
                wait_until(lambda: stored(conn) >= len(messages) // 3, 60, what="a third stored")
                faulted = threading.Thread(target=fault, name="fault")
                faulted.start()
            if mode == "drain":
                join_all(pubs)  # the broker holds the whole flood
                offered_s = time.perf_counter() - flood_t0
                os.kill(pid, signal.SIGCONT)
                cpu0 = cpu_seconds(pid)
                t0 = time.perf_counter()
            with contextlib.suppress(TimeoutError):  # a shortfall shows as loss
                wait_until(lambda: stored(conn) >= len(messages), FLOOD_TIMEOUT_S, 0.02, "all stored")
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds(pid) - cpu0
        if mode == "live":
            join_all(pubs)
            offered_s = time.perf_counter() - flood_t0
        if faulted is not None:
            faulted.join()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.proc.pid, signal.SIGCONT)
        proc.signal(signal.SIGTERM)
    t = tally(dsn)
    m = re.search(r"stopped \([^)]*\): messages=(\d+)", "".join(proc.log))
    handled = int(m.group(1)) if m else -1
    return {
        "samples_per_s": t["samples"] / elapsed,
        "messages_per_s": t["uplinks"] / elapsed,
        "seconds": elapsed,
        "offered_msgs_per_s": len(messages) / offered_s,
        "loss": (len(messages) - t["uplinks_distinct"]) + (samples - t["samples_distinct"]),
        "duplicate_rows": (t["uplinks"] - t["uplinks_distinct"]) + (t["samples"] - t["samples_distinct"]),
        "redelivered": handled - len(messages) if handled >= 0 else None,
        "cpu_ms_per_1000_samples": 1e6 * cpu / samples,
    }


# -- the ceilings -----------------------------------------------------------------------------------------
def paho_ceiling(broker: Mosquitto, messages: list[Message]) -> float:
    """A bare paho subscriber (persistent session) drains the flood that waited for it: messages/s."""
    n, got = len(messages), 0
    done, ready = threading.Event(), threading.Event()

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        nonlocal got
        got += 1
        if got >= n:
            done.set()

    def client() -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tiers-bare-sub", protocol=mqtt.MQTTv5)
        c.on_message = on_message
        c.on_subscribe = lambda *a: ready.set()
        c.on_connect = lambda cl, *a: cl.subscribe("mf/v1/+/up/#", qos=1)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 600
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        c.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        return c

    sub = client()
    sub.loop_start()
    if not ready.wait(10):
        raise RuntimeError("the bare subscriber could not subscribe")
    sub.disconnect()
    sub.loop_stop()
    join_all(flood([broker.url] * PUBLISHERS, messages, "ceiling"))
    t0 = time.perf_counter()
    sub = client()
    sub.loop_start()
    done.wait(FLOOD_TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    end = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
    end.SessionExpiryInterval = 0
    sub.disconnect(properties=end)
    sub.loop_stop()
    if got < n:
        raise RuntimeError(f"the bare subscriber got {got} of {n}")
    return n / elapsed


async def _pull_all(urls: list[str], n: int) -> float:
    import nats

    nc = await nats.connect(servers=urls)
    try:
        psub = await nc.jetstream(timeout=10).pull_subscribe_bind(durable="ingest", stream="$MQTT_msgs")
        got = 0
        t0 = time.perf_counter()
        deadline = time.monotonic() + FLOOD_TIMEOUT_S
        while got < n and time.monotonic() < deadline:
            try:
                msgs = await psub.fetch(500, timeout=2.0)
            except TimeoutError:
                continue
            for m in msgs:
                await m.ack()
            got += len(msgs)
        await nc.flush()
        elapsed = time.perf_counter() - t0
    finally:
        await nc.close()
    if got < n:
        raise RuntimeError(f"the bare pull consumer got {got} of {n}")
    return n / elapsed


def nats_ceiling(cluster: NatsCluster, messages: list[Message]) -> float:
    """The flood waits in the `ingest` durable; a bare nats-py pull consumer drains it: messages/s."""
    join_all(flood(gateways(cluster), messages, "ceiling"))
    return asyncio.run(_pull_all(cluster.nats_urls(), len(messages)))


# -- the tiers --------------------------------------------------------------------------------------------
def gateways(cluster: NatsCluster, failover: bool = False) -> list[str]:
    """Publisher k's gateway (node k % 3); with failover, every node's, its own first."""
    n = len(cluster.nodes)
    if not failover:
        return [cluster.mqtt_url(k % n) for k in range(PUBLISHERS)]
    return [",".join(cluster.mqtt_url((k + j) % n) for j in range(n)) for k in range(PUBLISHERS)]


@contextlib.contextmanager
def nats_tier() -> Iterator[NatsCluster]:
    from cloud.runtime.jetstream import DurableSpec
    from cloud.runtime.nats_cli import setup

    with tempfile.TemporaryDirectory(prefix="mf-tiers-") as tmp, NatsCluster.started(Path(tmp)) as cluster:
        urls = ",".join(cluster.nats_urls())
        asyncio.run(setup(urls, [DurableSpec(name="ingest")], mqtt_url=cluster.mqtt_url(0)))
        yield cluster


def run_tier(name: str, dsn: str, traffic: Any, results: dict[str, Any]) -> None:
    msgs, samples = traffic.messages, traffic.samples
    if name == "mosquitto":
        broker = Mosquitto()
        broker.start()
        try:
            console.print("(a) mosquitto: bare paho ceiling ...")
            results["mosquitto_ceiling_msgs_per_s"] = paho_ceiling(broker, msgs)
            for mode in ("live", "drain"):
                console.print(f"(a) mosquitto: ingest {mode} ...")
                results[f"mosquitto_{mode}"] = ingest_run(
                    mode=mode,
                    dsn=dsn,
                    env={},
                    mqtt_url=broker.url,
                    pub_urls=[broker.url] * PUBLISHERS,
                    messages=msgs,
                    samples=samples,
                    tag=f"mosq-{mode}",
                )
        finally:
            broker.close()
        return
    with nats_tier() as cluster:
        console.print(f"(b) NATS {cluster.version}: bare nats-py pull ceiling ...")
        results["nats_ceiling_msgs_per_s"] = nats_ceiling(cluster, msgs)
        env = {"MICROFLEET_NATS_URL": ",".join(cluster.nats_urls())}
        marks = ",".join(cluster.mqtt_url(i) for i in range(len(cluster.nodes)))
        for mode in ("live", "drain"):
            console.print(f"(b) NATS: ingest {mode} ...")
            results[f"nats_{mode}"] = ingest_run(
                mode=mode,
                dsn=dsn,
                env=env,
                mqtt_url=marks,
                pub_urls=gateways(cluster),
                messages=msgs,
                samples=samples,
                tag=f"nats-{mode}",
            )
        leader = cluster.wait_stream_leader("$MQTT_msgs")
        victim = cluster.index(leader)
        console.print(f"(c) NATS: ingest live, SIGKILL {leader} (the $MQTT_msgs leader) mid-flood ...")
        killed: dict[str, float] = {}

        def kill() -> None:
            t = time.perf_counter()
            cluster.kill(victim)
            new = cluster.wait_stream_leader("$MQTT_msgs", not_on=leader)
            killed["election_s"] = time.perf_counter() - t
            killed["new_leader"] = float(cluster.index(new))

        results["nats_kill"] = ingest_run(
            mode="live",
            dsn=dsn,
            env=env,
            mqtt_url=marks,
            pub_urls=gateways(cluster, failover=True),
            messages=msgs,
            samples=samples,
            tag="nats-kill",
            fault=kill,
        )
        results["nats_kill"]["election_s"] = killed.get("election_s")
        results["nats_version"] = cluster.version


def report(results: dict[str, Any], traffic: Any) -> dict[str, Any]:
    spm = traffic.samples / traffic.uplinks
    table = Table(
        title=f"broker tiers on {platform.node()} ({os.cpu_count()} cores), {spm:.1f} samples/message"
    )
    for col in (
        "tier / run",
        "samples/s",
        "msg/s",
        "ceiling msg/s",
        "ratio",
        "published msg/s",
        "loss",
        "dup rows",
        "redelivered",
        "CPU ms/1k samples",
    ):
        table.add_column(col, justify="left" if col == "tier / run" else "right")
    summary: dict[str, Any] = {
        "messages": traffic.uplinks,
        "samples": traffic.samples,
        "publishers": PUBLISHERS,
    }
    for tier in ("mosquitto", "nats"):
        ceiling = results[f"{tier}_ceiling_msgs_per_s"]
        summary[f"{tier}_ceiling_msgs_per_s"] = round(ceiling)
        table.add_row(
            f"{tier}: bare consumer (drain)", "", f"{ceiling:,.0f}", f"{ceiling:,.0f}", "1.00", *[""] * 5
        )
        for run in ("live", "drain", "kill"):
            r = results.get(f"{tier}_{run}")
            if r is None:
                continue
            ratio = r["messages_per_s"] / ceiling
            table.add_row(
                f"{tier}: ingest {run}",
                f"{r['samples_per_s']:,.0f}",
                f"{r['messages_per_s']:,.0f}",
                f"{ceiling:,.0f}",
                f"{ratio:.2f}",
                f"{r['offered_msgs_per_s']:,.0f}",
                str(r["loss"]),
                str(r["duplicate_rows"]),
                str(r["redelivered"]),
                f"{r['cpu_ms_per_1000_samples']:.1f}",
            )
            key = f"{tier}_{run}"
            summary[f"{key}_samples_per_s"] = round(r["samples_per_s"])
            summary[f"{key}_ratio_to_ceiling"] = round(ratio, 3)
            summary[f"{key}_published_msgs_per_s"] = round(r["offered_msgs_per_s"])
            summary[f"{key}_loss"] = r["loss"]
            summary[f"{key}_duplicate_rows"] = r["duplicate_rows"]
            summary[f"{key}_redelivered"] = r["redelivered"]
            summary[f"{key}_cpu_ms_per_1000_samples"] = round(r["cpu_ms_per_1000_samples"], 2)
    console.print(table)
    k = results["nats_kill"]
    console.print(
        f"(c) SIGKILL of the $MQTT_msgs leader mid-flood: new leader after {k['election_s'] or 0:.1f} s, "
        f"loss {k['loss']}, duplicate rows {k['duplicate_rows']}, redelivered {k['redelivered']}"
    )
    summary["nats_kill_election_s"] = round(k["election_s"] or 0, 2)
    summary["nats_version"] = results["nats_version"]
    summary["ratio_nats_to_mosquitto_drain_samples"] = round(
        results["nats_drain"]["samples_per_s"] / results["mosquitto_drain"]["samples_per_s"], 3
    )
    summary["ratio_nats_to_mosquitto_ceiling"] = round(
        results["nats_ceiling_msgs_per_s"] / results["mosquitto_ceiling_msgs_per_s"], 3
    )
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a third of the devices")
    ap.add_argument("--devices", type=int, default=300)
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--samples-per-message", type=int, default=10)
    args = ap.parse_args()
    devices = max(PUBLISHERS, args.devices // 3 if args.quick else args.devices)
    traffic = fleet_traffic(
        devices, args.sessions, batches=15, samples_per_batch=args.samples_per_message, first_seq=0
    )
    console.rule(f"[bold]broker tiers[/] - {traffic.uplinks} messages, {traffic.samples} samples")
    results: dict[str, Any] = {}
    with scratch_database("mf_tiers") as dsn:
        migrate(dsn)
        run_tier("mosquitto", dsn, traffic, results)
        run_tier("nats", dsn, traffic, results)
    print(json.dumps(report(results, traffic)))


if __name__ == "__main__":
    main()
