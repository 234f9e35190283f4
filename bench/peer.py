"""The peer, side by side (issue 13 part 3): Node-RED's batched flow and microfleet's ingest, one run.

    python bench/peer.py [--quick] [--devices 500] [--samples-per-message 10] [--samples 300000]
                         [--ingest-processes 1] [--writers 1,2 --rounds 3]

The workload: `--devices` devices, one session each (status, start, sample batches of
`--samples-per-message` samples, an event, an end), interleaved round robin, flooded at QoS 1 by a paho
publisher child process (300,000 samples: 32,000 messages; `--quick` a fifth of it).
(a) Node-RED 4 (npm `node-red`, pinned in bench/nodered/package.json, installed into the git-ignored
    bench/.node-red/ on first use) running bench/nodered/flow.json: `mqtt in` (QoS 1, persistent session,
    parsed JSON, `mf/v1/+/up/samples`) -> `join` of 100 messages (1 s timeout) -> a `function` node that
    sends one multi-row INSERT ... ON CONFLICT (device_id, ts) DO NOTHING per joined batch with the `pg`
    client (its pool of up to 10 connections) into `nodered_samples`: microfleet's `samples` columns and
    natural-key primary key in a plain table. `node-red-contrib-postgresql` is not on the registry this
    project reaches; a function node with `pg` is the other flow its users build. Headless, loopback only.
(b) microfleet: `python -m cloud.ingest` process(es) as bench/ingest.py runs them (commit marks on,
    production defaults), every uplink kind into the real schema.
Each is measured "live" (the consumer runs during the flood; the clock runs from the publisher's start)
and "drain" (the consumer is held with SIGSTOP while the broker takes the whole flood, then released with
SIGCONT; the clock runs from the release), each phase on a fresh private mosquitto (the project's
configuration) and truncated tables of one scratch database. Loss is counted from the database (every
sample exactly once: the count against the primary key). Consumer CPU is read from /proc/<pid>/stat, and
apart from it the CPU of the consumer's PostgreSQL backends. Ceilings of the same run: a bare paho
subscriber (the publisher child -> mosquitto -> paho, QoS 1) and binary COPY into both tables; microfleet's
messages per CPU second (messages/s per core) are printed next to the bare subscriber's network thread's.
The last printed line is one JSON object with the ratios microfleet / Node-RED.
`--writers 1,2` instead runs microfleet's drain only, once per MICROFLEET_INGEST_WRITERS value in turn,
`--rounds` times (alternating), next to the binary COPY ceiling of the same run; its JSON has each run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from bench._common import (  # noqa: E402
    IngestProcess,
    Message,
    cpu_seconds,
    fleet_traffic,
    publish_in_child,
    raw_broker_figures,
    wait_until,
)
from bench.ingest import TABLES, copy_rate, sample_batches  # noqa: E402
from cloud.db.migrate import migrate  # noqa: E402
from tests.support.services import Mosquitto, scratch_database  # noqa: E402

console = Console(width=max(130, shutil.get_terminal_size().columns))
SOURCE = ROOT / "bench" / "nodered"  # committed: flow.json, settings.js, package.json, package-lock.json
USER_DIR = ROOT / "bench" / ".node-red"  # git-ignored: node_modules and the copies Node-RED runs
NODERED_CLIENT_ID = "bench-nodered"  # the flow's mqtt-broker client id (persistent session)
NODERED_TABLE = """CREATE TABLE IF NOT EXISTS nodered_samples (
    device_id text not null, ts timestamptz not null, session_id text not null, current_ua real,
    voltage_v real, impedance_ohm real, contact bool, zone text, level smallint,
    primary key (device_id, ts))"""
POLL_S = 0.1  # the stored count is polled this often (one count(*) each, for both consumers)
STALL_S = 20.0  # no new row for this long: stop waiting and report the shortfall as loss


def install_nodered() -> Path:
    """Node-RED and pg into bench/.node-red/ at the pinned versions (npm, once); the flow and settings
    copied there fresh. Returns the path of red.js."""
    node = shutil.which("node")
    if node is None:
        raise SystemExit(
            "node is not installed: Node-RED 4 needs Node 18.5 or later (apt-get install nodejs)"
        )
    USER_DIR.mkdir(parents=True, exist_ok=True)
    red = USER_DIR / "node_modules" / "node-red" / "red.js"
    wanted = (SOURCE / "package.json").read_text()
    current = USER_DIR / "package.json"
    if not red.exists() or not current.exists() or current.read_text() != wanted:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(SOURCE / name, USER_DIR / name)
        with console.status("npm install (Node-RED, pg) into bench/.node-red/ ..."):
            done = subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund"], cwd=USER_DIR, capture_output=True, text=True
            )
        if done.returncode != 0:
            raise SystemExit(f"npm install failed in {USER_DIR}:\n{done.stderr[-2000:]}")
    for name in ("flow.json", "settings.js"):
        shutil.copy(SOURCE / name, USER_DIR / name)
    return red


class NodeRed:
    """Node-RED running bench/nodered/flow.json against `broker` and `dsn`; its log read by a thread."""

    def __init__(self, red: Path, broker: Mosquitto, dsn: str) -> None:
        # the flow's persistent session exists before Node-RED connects: no message can slip past it
        precreate_session(broker.port, NODERED_CLIENT_ID, "mf/v1/+/up/samples")
        env = {**os.environ, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(broker.port), "PG_URL": dsn}
        self.proc = subprocess.Popen(
            ["node", str(red), "--userDir", str(USER_DIR)],
            cwd=USER_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, name="log:node-red", daemon=True)
        self._reader.start()
        wait_until(lambda: any("Connected to broker" in s for s in self.log), 60, what="Node-RED connected")
        if not any("Running in headless mode" in s for s in self.log):  # no editor, no HTTP listener at all
            self.close()
            raise RuntimeError("Node-RED opened its HTTP server: bench/nodered/settings.js was not applied")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]

    def errors(self) -> list[str]:
        return [s.strip() for s in self.log if "[error]" in s]

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)


class Microfleet:
    """`python -m cloud.ingest` process(es), commit marks on, production defaults."""

    def __init__(
        self, broker: Mosquitto, dsn: str, processes: int, env: dict[str, str] | None = None
    ) -> None:
        self.procs = [
            IngestProcess(broker.url, dsn, f"bench-peer-{i}", **(env or {})) for i in range(1, processes + 1)
        ]
        for p in self.procs:
            p.wait_subscribed()

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.procs]

    def errors(self) -> list[str]:
        return [s.strip() for p in self.procs for s in p.log if " ERROR " in s or "Traceback" in s]

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGCONT)
            p.signal(signal.SIGTERM)


def precreate_session(port: int, client_id: str, topic: str) -> None:
    """An MQTT 3.1.1 persistent session with its QoS 1 subscription, left for `client_id` to take over."""
    ready = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
    c.on_subscribe = lambda *a: ready.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        if not ready.wait(10):
            raise RuntimeError(f"could not subscribe {client_id} to {topic}")
    finally:
        c.disconnect()
        c.loop_stop()


@contextlib.contextmanager
def fresh_broker() -> Iterator[Mosquitto]:
    broker = Mosquitto()
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


def truncate(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)}, nodered_samples")


def backend_cpu(conn: psycopg.Connection[Any]) -> dict[int, float]:
    """CPU seconds of every other backend connected to this database, by pid."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    return {int(r[0]): cpu_seconds(int(r[0])) for r in rows}


@dataclass
class Phase:
    consumer: str
    mode: str  # live | drain
    samples_per_s: float
    seconds: float
    stored: int
    expected: int
    uplinks_stored: int | None  # microfleet's uplink_log (every message once), None for Node-RED
    messages: int
    cpu_ms_per_1000: float
    db_cpu_ms_per_1000: float
    errors: int

    @property
    def msgs_per_cpu_s(self) -> float:
        """Messages consumed per CPU second of the consumer process(es): messages/s per core."""
        cpu_s = self.cpu_ms_per_1000 * self.stored / 1e6
        return self.messages / cpu_s if cpu_s > 0 else 0.0

    @property
    def loss(self) -> int:
        lost = self.expected - self.stored
        if self.uplinks_stored is not None:
            lost += self.messages - self.uplinks_stored
        return lost


def run_phase(
    consumer: str,
    mode: str,
    red: Path | None,
    dsn: str,
    msgs: list[Message],
    expected: int,
    processes: int,
    env: dict[str, str] | None = None,
) -> Phase:
    truncate(dsn)
    table = "nodered_samples" if consumer == "Node-RED" else "samples"
    with fresh_broker() as broker, psycopg.connect(dsn, autocommit=True) as conn:
        runner: NodeRed | Microfleet = (
            NodeRed(red, broker, dsn)
            if consumer == "Node-RED" and red is not None
            else Microfleet(broker, dsn, processes, env)
        )
        try:
            pub_id = f"bench-peer-pub-{consumer.lower()}-{mode}"
            if mode == "drain":
                for pid in runner.pids:
                    os.kill(pid, signal.SIGSTOP)
                child = publish_in_child(broker.url, msgs, pub_id)
                child.join(300)
                if child.exitcode != 0:
                    raise RuntimeError("the publisher did not get every PUBACK (drain)")
            cpu0 = sum(cpu_seconds(p) for p in runner.pids)
            db0 = backend_cpu(conn)
            t0 = time.perf_counter()
            if mode == "drain":
                for pid in runner.pids:
                    os.kill(pid, signal.SIGCONT)
            else:
                child = publish_in_child(broker.url, msgs, pub_id)
            stored, t_last = wait_stored(conn, table, expected, f"{consumer} {mode}", t0)
            cpu = sum(cpu_seconds(p) for p in runner.pids) - cpu0
            db1 = backend_cpu(conn)
            dbcpu = sum(v - db0.get(pid, 0.0) for pid, v in db1.items())
            child.join(60)
            uplinks = None
            if consumer != "Node-RED":  # every uplink once too (not timed: the samples are the race)
                uplinks, _ = wait_stored(
                    conn, "uplink_log", len(msgs), f"{consumer} {mode}", time.perf_counter()
                )
            errors = len(runner.errors())
        finally:
            runner.close()
    seconds = t_last - t0
    per_1000 = 1000.0 / max(stored, 1)
    return Phase(
        consumer,
        mode,
        stored / seconds if seconds > 0 else 0.0,
        seconds,
        stored,
        expected,
        uplinks,
        len(msgs),
        cpu * per_1000 * 1000.0,
        dbcpu * per_1000 * 1000.0,
        errors,
    )


def wait_stored(
    conn: psycopg.Connection[Any], table: str, expected: int, what: str, t0: float
) -> tuple[int, float]:
    """Poll count(*) until `expected` rows (or no progress for STALL_S): (rows, when the last arrived)."""
    count, t_last = 0, t0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"{what}: rows in {table}", total=expected)
        while count < expected and time.perf_counter() - t_last < STALL_S:
            time.sleep(POLL_S)
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            now = int(row[0]) if row else 0
            if now != count:
                count, t_last = now, time.perf_counter()
                progress.update(task, completed=count)
    return count, t_last


def with_db(p: Phase) -> float:
    """The consumer's CPU and its PostgreSQL backends' per 1,000 samples: what the whole path costs."""
    return p.cpu_ms_per_1000 + p.db_cpu_ms_per_1000


def copy_ceiling(dsn: str, msgs: list[Message], table: str) -> float:
    truncate(dsn)
    with psycopg.connect(dsn) as conn:
        return copy_rate(conn, table, sample_batches(msgs, 2000))


def report(phases: dict[str, Phase], ceilings: dict[str, float], spm: float, traffic_line: str) -> None:
    t = Table(title=f"Node-RED and microfleet on {platform.node()} ({os.cpu_count()} cores): {traffic_line}")
    for col in ("consumer", "phase", "samples/s", "/ COPY", "seconds", "loss", "CPU ms/1k", "db CPU ms/1k"):
        t.add_column(col, justify="left" if col in ("consumer", "phase") else "right")
    broker, copy_mf, copy_nr = (
        ceilings["broker_msgs_per_s"],
        ceilings["copy_samples"],
        ceilings["copy_nodered"],
    )
    t.add_row("bare paho subscriber", "ceiling", f"{broker * spm:,.0f}", "", "", "", "", "")
    t.add_row("binary COPY into samples", "ceiling", f"{copy_mf:,.0f}", "", "", "", "", "")
    t.add_row("binary COPY into nodered_samples", "ceiling", f"{copy_nr:,.0f}", "", "", "", "", "")
    for p in phases.values():
        ceiling = copy_nr if p.consumer == "Node-RED" else copy_mf
        t.add_row(
            p.consumer,
            p.mode,
            f"{p.samples_per_s:,.0f}",
            f"{p.samples_per_s / ceiling:.2f}",
            f"{p.seconds:.2f}",
            str(p.loss),
            f"{p.cpu_ms_per_1000:.1f}",
            f"{p.db_cpu_ms_per_1000:.1f}",
        )
    console.print(t)
    console.print(
        f"bare paho subscriber: {broker:,.0f} msg/s x {spm:.2f} samples/message. Loss: expected minus stored "
        "samples (primary key: each at most once), for microfleet also uplinks (uplink_log). Node-RED "
        "acknowledges QoS 1 on arrival: a crash loses what it holds, up to the whole backlog in a drain."
    )


def writers_ab(args: argparse.Namespace, msgs: list[Message], expected: int, line: str) -> None:
    """microfleet's drain per writer count, alternating, next to binary COPY into `samples` (same run)."""
    counts = [int(w) for w in args.writers.split(",")]
    console.rule(f"[bold]ingest writers {counts}, drain[/] - {line}")
    runs: list[dict[str, Any]] = []
    with scratch_database("mf_peer") as dsn:
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(NODERED_TABLE)  # truncate() empties it too
        copy = copy_ceiling(dsn, msgs, "samples")
        console.print(f"binary COPY into samples: {copy:,.0f} rows/s")
        for r in range(1, args.rounds + 1):
            for w in counts:
                env = {"MICROFLEET_INGEST_WRITERS": str(w)}
                p = run_phase("microfleet", "drain", None, dsn, msgs, expected, args.ingest_processes, env)
                runs.append(
                    {
                        "round": r,
                        "writers": w,
                        "samples_per_s": round(p.samples_per_s),
                        "to_copy": round(p.samples_per_s / copy, 3),
                        "cpu_ms_per_1000": round(p.cpu_ms_per_1000, 2),
                        "db_cpu_ms_per_1000": round(p.db_cpu_ms_per_1000, 2),
                        "loss": p.loss,
                        "errors": p.errors,
                    }
                )
                console.print(
                    f"round {r}, {w} writer(s): {p.samples_per_s:,.0f} samples/s ({p.samples_per_s / copy:.2f} "
                    f"of COPY), loss {p.loss}, consumer CPU {p.cpu_ms_per_1000:.1f} ms per 1,000 samples, "
                    f"database {p.db_cpu_ms_per_1000:.1f}, {p.errors} errors logged"
                )
        truncate(dsn)
    print(json.dumps({"copy_samples_rows_per_s": round(copy), "drain": runs}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a fifth of the workload (60,000 samples)")
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--samples-per-message", type=int, default=10)
    ap.add_argument(
        "--samples", type=int, default=0, help="samples in the flood (default 300000, quick 60000)"
    )
    ap.add_argument("--ingest-processes", type=int, default=1, help="microfleet consumer processes")
    ap.add_argument(
        "--writers", default="", help="e.g. 1,2: microfleet's drain only, per MICROFLEET_INGEST_WRITERS value"
    )
    ap.add_argument("--rounds", type=int, default=3, help="with --writers: alternating rounds")
    args = ap.parse_args()
    total = args.samples or (60_000 if args.quick else 300_000)
    batches = max(1, total // (args.devices * args.samples_per_message))
    traffic = fleet_traffic(
        args.devices, 1, batches=batches, samples_per_batch=args.samples_per_message, first_seq=0
    )
    msgs, expected = traffic.messages, traffic.samples
    spm = expected / len(msgs)
    line = f"{args.devices} devices, {len(msgs):,} messages, {expected:,} samples ({args.samples_per_message}/batch)"
    if args.writers:
        writers_ab(args, msgs, expected, line)
        return
    console.rule(f"[bold]the peer, side by side[/] - {line}")
    red = install_nodered()
    started = datetime.now(UTC)
    ceilings: dict[str, float] = {}
    phases: dict[str, Phase] = {}
    with scratch_database("mf_peer") as dsn:
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(NODERED_TABLE)
        console.print("ceilings: bare paho subscriber, binary COPY into both tables ...")
        with fresh_broker() as broker:
            rate, cpu_per_msg = raw_broker_figures(broker.port, broker.url, msgs)
            ceilings["broker_msgs_per_s"], ceilings["broker_cpu_s_per_msg"] = rate, cpu_per_msg
        ceilings["copy_samples"] = copy_ceiling(dsn, msgs, "samples")
        ceilings["copy_nodered"] = copy_ceiling(dsn, msgs, "nodered_samples")
        for mode in ("live", "drain"):
            for consumer in ("Node-RED", "microfleet"):
                p = run_phase(consumer, mode, red, dsn, msgs, expected, args.ingest_processes)
                phases[f"{consumer}-{mode}"] = p
                console.print(
                    f"{consumer} {mode}: {p.samples_per_s:,.0f} samples/s, loss {p.loss}, "
                    f"CPU {p.cpu_ms_per_1000:.1f} ms per 1,000 samples, {p.errors} errors logged"
                )
        truncate(dsn)
    report(phases, ceilings, spm, line)
    nr_live, nr_drain = phases["Node-RED-live"], phases["Node-RED-drain"]
    mf_live, mf_drain = phases["microfleet-live"], phases["microfleet-drain"]
    summary: dict[str, Any] = {
        "date": started.strftime("%Y-%m-%d"),
        "devices": args.devices,
        "messages": len(msgs),
        "samples": expected,
        "samples_per_message": args.samples_per_message,
        "ingest_processes": args.ingest_processes,
        "broker_msgs_per_s": round(ceilings["broker_msgs_per_s"]),
        "broker_samples_per_s": round(ceilings["broker_msgs_per_s"] * spm),
        "copy_samples_rows_per_s": round(ceilings["copy_samples"]),
        "copy_nodered_rows_per_s": round(ceilings["copy_nodered"]),
    }
    for key, p in phases.items():
        k = key.lower().replace("-", "_")
        summary[f"{k}_samples_per_s"] = round(p.samples_per_s)
        summary[f"{k}_loss"] = p.loss
        summary[f"{k}_cpu_ms_per_1000"] = round(p.cpu_ms_per_1000, 2)
        summary[f"{k}_db_cpu_ms_per_1000"] = round(p.db_cpu_ms_per_1000, 2)
        summary[f"{k}_errors"] = p.errors
    bare_per_core = 1.0 / max(ceilings["broker_cpu_s_per_msg"], 1e-12)
    summary["bare_paho_msgs_per_cpu_s"] = round(bare_per_core)
    for key in ("microfleet-live", "microfleet-drain"):
        summary[f"{key.replace('-', '_')}_msgs_per_cpu_s"] = round(phases[key].msgs_per_cpu_s)
    console.print(
        f"messages per CPU second (per core): bare paho subscriber {bare_per_core:,.0f}; microfleet live "
        f"{mf_live.msgs_per_cpu_s:,.0f} ({mf_live.msgs_per_cpu_s / bare_per_core:.2f}x), drain "
        f"{mf_drain.msgs_per_cpu_s:,.0f} ({mf_drain.msgs_per_cpu_s / bare_per_core:.2f}x); goal 2x"
    )
    summary |= {
        "ratio_microfleet_live_per_core_to_bare_paho": round(mf_live.msgs_per_cpu_s / bare_per_core, 3),
        "ratio_microfleet_drain_per_core_to_bare_paho": round(mf_drain.msgs_per_cpu_s / bare_per_core, 3),
        "ratio_live_samples_per_s": round(mf_live.samples_per_s / max(nr_live.samples_per_s, 1e-9), 3),
        "ratio_drain_samples_per_s": round(mf_drain.samples_per_s / max(nr_drain.samples_per_s, 1e-9), 3),
        "ratio_live_cpu_per_1000": round(mf_live.cpu_ms_per_1000 / max(nr_live.cpu_ms_per_1000, 1e-9), 3),
        "ratio_drain_cpu_per_1000": round(mf_drain.cpu_ms_per_1000 / max(nr_drain.cpu_ms_per_1000, 1e-9), 3),
        "ratio_live_cpu_with_db_per_1000": round(with_db(mf_live) / max(with_db(nr_live), 1e-9), 3),
        "ratio_drain_cpu_with_db_per_1000": round(with_db(mf_drain) / max(with_db(nr_drain), 1e-9), 3),
        "ratio_microfleet_drain_to_copy": round(mf_drain.samples_per_s / ceilings["copy_samples"], 3),
        "ratio_microfleet_live_to_copy": round(mf_live.samples_per_s / ceilings["copy_samples"], 3),
        "loss": sum(p.loss for p in phases.values()),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
