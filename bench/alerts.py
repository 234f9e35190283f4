"""Alert latency under steady load: publish of the triggering message -> alert committed, and -> the
notice reaching the device; p50 / p99 / max, printed beside the ingest rate of the same run.

One private mosquitto, a scratch database, one ingest consumer process and one alert engine process
(separate shared-subscription groups, so both see every message). A publisher process sends valid
background traffic (sessions without any alert) at a steady `--rate` for `--seconds`, and every
`--trigger-every` seconds a trigger: a sample batch of a new device with a 950 µA sample (T7, critical:
never held by quiet hours). This process timestamps each committed alert (LISTEN mf_alerts: NOTIFY is
delivered at COMMIT) and each notice (a subscriber on mf/v1/+/down/notice).

Beside them, in the same run: the ceiling of a Python MQTT consumer on this machine (a bare paho
subscriber fed by the same publisher, bench/_common.raw_broker_rate) and the CPU each process used per
message (ingest, engine, broker, publisher, on 2 shared cores: what the offered rate costs).

`--feed` (default `both`): MICROFLEET_ALERT_FEED of ingest and the engine, `uplinks` (the engine subscribes
to device traffic itself), `committed` (the engine reads the batches ingest committed, one feed message per
batch: docs/decisions/alert-feed.md), or both one after the other against the same broker and ceiling;
`--ceiling-share 0.5` offers half the ceiling measured first (issue 13's goal is stated at >= 0.5 of it).

Goal (issue 3): p99 < 250 ms at >= 5,000 messages/s, and the alert engine never the bottleneck: it must
finish the traffic no later than ingest. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from bench._common import (  # noqa: E402
    Message,
    Publisher,
    cpu_seconds,
    fleet_traffic,
    raw_broker_rate,
    to_wire,
    wait_until,
)
from cloud.db.migrate import migrate  # noqa: E402
from contract import topics  # noqa: E402
from contract.messages import Sample, SampleBatch, Zone  # noqa: E402
from tests.support.services import Mosquitto, scratch_database  # noqa: E402


def trigger(i: int, now: datetime) -> Message:
    dev = f"trig-{i}"
    samples = (
        Sample(now - timedelta(seconds=1), 200.0, 5.0, 8000.0, True, Zone.CHEEK_L, 2),
        Sample(now, 950.0, 5.0, 8000.0, True, Zone.CHEEK_L, 2),
    )
    return to_wire(SampleBatch(device_id=dev, seq=1, ts=now, session_id=f"s-{dev}", samples=samples))


def publish_paced(
    url: str, background: list[Message], rate: float, seconds: float, every: float, out: Any
) -> None:
    """Child process: `rate` msgs/s held against the clock (a late tick catches up, so the offered rate is
    the rate asked for unless this process runs out of CPU), a trigger every `every` s. Reports the
    trigger times, how many messages the broker acknowledged, and when the last acknowledgement came
    (the achieved rate: a message paho still queues when the run ends is not counted as published)."""
    pub = Publisher(url, "bench-alerts-pub", inflight=2000)
    sent: dict[str, float] = {}
    infos: list[mqtt.MQTTMessageInfo] = []
    tick = 0.005
    t0, n, i, next_trigger = time.perf_counter(), 0, 0, 0.0
    while n < len(background) and time.perf_counter() - t0 < seconds:
        elapsed = time.perf_counter() - t0
        if elapsed >= next_trigger:
            topic, payload = trigger(i, datetime.now(UTC))
            sent[f"trig-{i}"] = time.time()
            infos.append(pub.client.publish(topic, payload, qos=1))
            i, next_trigger = i + 1, next_trigger + every
        due = min(len(background), int(rate * elapsed))
        infos += [pub.client.publish(topic, payload, qos=1) for topic, payload in background[n:due]]
        n = max(n, due)
        sleep = t0 + (elapsed // tick + 1) * tick - time.perf_counter()
        if sleep > 0:
            time.sleep(sleep)
    deadline = time.monotonic() + 60
    for info in infos:
        info.wait_for_publish(max(0.01, deadline - time.monotonic()))
    acked = sum(1 for info in infos if info.is_published())
    cpu = sum(os.times()[:2])
    out.put(
        {"sent": sent, "background": n, "acked": acked, "publish_s": time.perf_counter() - t0, "cpu_s": cpu}
    )
    pub.close()


class Proc:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def subscribed(self) -> bool:
        return any(" subscribed to " in line for line in self.lines)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


@contextlib.contextmanager
def logs_on_failure(*procs: Proc) -> Iterator[None]:
    """On a timeout, show what the consumers logged: the figures alone would not say why."""
    try:
        yield
    except TimeoutError:
        for p in procs:
            print("".join(p.lines[-15:]), file=sys.stderr)
        raise


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=5000.0, help="background messages per second")
    ap.add_argument(
        "--ceiling-share",
        type=float,
        default=0.0,
        help="offer this share of the bare-consumer ceiling measured first (e.g. 0.5), instead of --rate",
    )
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--trigger-every", type=float, default=0.1)
    ap.add_argument("--engines", type=int, default=1, help="alert engine processes (one shared group)")
    ap.add_argument(
        "--feed",
        choices=("uplinks", "committed", "both"),
        default="both",
        help="MICROFLEET_ALERT_FEED of ingest and the engine; both: one after the other in this run",
    )
    a = ap.parse_args()
    broker = Mosquitto()
    broker.start()
    try:
        probe = fleet_traffic(max(1, 20_000 // 49), 7, prefix="bg").messages[:20_000]
        ceiling = raw_broker_rate(broker.port, broker.url, probe)
        print(
            f"ceiling: a bare paho subscriber receives {ceiling:,.0f} msg/s from this broker on this machine"
        )
        if a.ceiling_share > 0:
            a.rate = round(a.ceiling_share * ceiling, -1)
            print(f"offering {a.rate:,.0f} msg/s: {a.ceiling_share} of that ceiling")
        devices = max(1, int(a.rate * a.seconds / 49))  # 7 sessions x 7 messages per device
        background = fleet_traffic(devices, 7, prefix="bg").messages[: int(a.rate * a.seconds)]
        feeds = ("uplinks", "committed") if a.feed == "both" else (a.feed,)
        results = {}
        for k, feed in enumerate(feeds):
            print(f"--- MICROFLEET_ALERT_FEED={feed}")
            results[feed] = measure(a, broker, ceiling, background, feed, run=k)
    finally:
        broker.close()
    if len(results) == 2:
        u, c = results["uplinks"], results["committed"]
        print(
            "committed vs uplinks: notice p99 "
            f"{c['p99_ms']} vs {u['p99_ms']} ms, engine CPU {c['cpu_us_per_msg']['engine']} vs "
            f"{u['cpu_us_per_msg']['engine']} us per message, broker CPU {c['cpu_us_per_msg']['broker']} vs "
            f"{u['cpu_us_per_msg']['broker']} us, ingest CPU {c['cpu_us_per_msg']['ingest']} vs "
            f"{u['cpu_us_per_msg']['ingest']} us, at {c['rate_msgs'] / ceiling:.2f} / "
            f"{u['rate_msgs'] / ceiling:.2f} of the ceiling"
        )
    out: dict[str, Any] = {"broker_ceiling_msgs": round(ceiling, 1), "offered_rate_msgs": a.rate}
    if len(results) == 1:
        out.update(next(iter(results.values())))
    else:
        out.update(results)
    print(json.dumps(out))


def measure(
    a: argparse.Namespace,
    broker: Mosquitto,
    ceiling: float,
    background: list[Message],
    feed: str,
    run: int = 0,
) -> dict[str, Any]:
    """One run of ingest and the engine(s) in `feed` mode on `broker` and a scratch database."""
    notices: dict[str, float] = {}
    committed: dict[str, float] = {}
    procs: list[Proc] = []
    try:
        with scratch_database("mf_bench_alerts") as dsn:
            migrate(dsn)
            env = {
                "MICROFLEET_DATABASE_URL": dsn,
                "MICROFLEET_MQTT_URL": broker.url,
                "MICROFLEET_ALERT_QUIET_START": "00:00",
                "MICROFLEET_ALERT_QUIET_END": "00:00",
                "MICROFLEET_ALERT_FEED": feed,
            }
            ingest = Proc(["cloud.ingest", "--consumer-id", f"bench-ingest-{run}", "--no-housekeeping"], env)
            engines = [
                Proc(["cloud.alerts", "run", "--no-gate", "--consumer-id", f"bench-alerts-{run}-{k}"], env)
                for k in range(a.engines)
            ]
            procs += [ingest, *engines]
            wait_until(
                lambda: ingest.subscribed() and all(e.subscribed() for e in engines),
                30,
                what="consumers subscribed",
            )

            sub = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"bench-device-{run}", protocol=mqtt.MQTTv5
            )
            ready = threading.Event()
            sub.on_subscribe = lambda *_a: ready.set()
            sub.on_connect = lambda c, *_a: c.subscribe(topics.PREFIX + "/+/down/notice", qos=1)

            def on_notice(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
                notices.setdefault(m.topic.split("/")[2], time.time())

            sub.on_message = on_notice
            sub.connect("127.0.0.1", broker.port)
            sub.loop_start()
            assert ready.wait(10)

            listen = psycopg.connect(dsn, autocommit=True)
            listen.execute("listen mf_alerts")
            stop = threading.Event()

            def listener() -> None:
                while not stop.is_set():
                    for n in listen.notifies(timeout=0.2):
                        at = time.time()
                        for _id, dev, _rule in json.loads(n.payload):
                            committed.setdefault(dev, at)

            lt = threading.Thread(target=listener, daemon=True)
            lt.start()
            q: Any = mp.Queue()
            watched = {"ingest": [ingest.proc.pid], "engine": [e.proc.pid for e in engines]}
            assert broker.proc is not None
            watched["broker"] = [broker.proc.pid]
            cpu0 = {k: sum(cpu_seconds(p) for p in pids) for k, pids in watched.items()}
            t0 = time.perf_counter()
            child = mp.Process(
                target=publish_paced, args=(broker.url, background, a.rate, a.seconds, a.trigger_every, q)
            )
            child.start()
            report = q.get(timeout=a.seconds + 120)
            sent, total = report["sent"], report["background"] + len(report["sent"])
            if report["acked"] < total:
                raise SystemExit(
                    f"the broker acknowledged {report['acked']} of {total} messages within 60 s: the "
                    "publisher could not keep up (is the machine busy?); nothing to measure"
                )
            with psycopg.connect(dsn, autocommit=True) as conn, logs_on_failure(ingest, *engines):

                def count(sql: str) -> int:
                    row = conn.execute(sql).fetchone()
                    return int(row[0]) if row else 0

                wait_until(
                    lambda: count("select count(*) from uplink_log") >= total, 120, 0.02, "ingest done"
                )
                ingest_s = time.perf_counter() - t0
                sessions_bg = sum(
                    1 for t, _ in background[: report["background"]] if t.endswith("/session_end")
                )
                wait_until(
                    lambda: (
                        count("select count(*) from alert_history") >= sessions_bg
                        and all(d in notices for d in sent)
                    ),
                    120,
                    0.02,
                    "alert engine done",
                )
                alerts_s = time.perf_counter() - t0
                cpu = {k: sum(cpu_seconds(p) for p in pids) - cpu0[k] for k, pids in watched.items()}
                by_rule = conn.execute(
                    "select case when device_id like 'trig-%%' then 'trigger ' else 'background ' end "
                    "|| rule_id, count(*) from alerts group by 1 order by 1"
                ).fetchall()
            child.join(10)
            stop.set()
            lt.join(2)
            listen.close()
            sub.loop_stop()
            ingest.stop()
            for e in engines:
                e.stop()
    finally:
        for p in procs:  # on a failure too: no consumer outlives the benchmark
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(10)
    commit_ms = [1000 * (committed[d] - s) for d, s in sent.items() if d in committed]
    notice_ms = [1000 * (notices[d] - s) for d, s in sent.items() if d in notices]
    cpu["publisher"] = report["cpu_s"]
    cpu_us = {k: round(1e6 * v / total, 1) for k, v in cpu.items()}
    result = {
        "feed": feed,
        "offered_rate_msgs": a.rate,
        "broker_ceiling_msgs": round(ceiling, 1),
        "rate_of_ceiling": round(total / report["publish_s"] / ceiling, 2),
        "rate_msgs": round(total / report["publish_s"], 1),
        "ingest_rate_msgs": round(total / ingest_s, 1),
        "alerts_rate_msgs": round(total / alerts_s, 1),
        "engines": a.engines,
        "ingest_done_s": round(ingest_s, 2),
        "alerts_done_s": round(alerts_s, 2),
        "triggers": len(sent),
        "committed": len(commit_ms),
        "notices": len(notice_ms),
        "commit_p50_ms": round(pct(commit_ms, 0.5), 1),
        "commit_p99_ms": round(pct(commit_ms, 0.99), 1),
        "commit_max_ms": round(max(commit_ms, default=float("nan")), 1),
        "p50_ms": round(pct(notice_ms, 0.5), 1),
        "p99_ms": round(pct(notice_ms, 0.99), 1),
        "max_ms": round(max(notice_ms, default=float("nan")), 1),
        "cpu_us_per_msg": cpu_us,
    }
    print(
        f"published {total} messages at {result['rate_msgs']}/s; ingest stored them at {result['ingest_rate_msgs']}/s"
    )
    print(
        f"alert committed: p50 {result['commit_p50_ms']} ms, p99 {result['commit_p99_ms']} ms, max {result['commit_max_ms']} ms"
    )
    print(
        f"notice at device: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms (goal p99 < 250)"
    )
    print("alerts raised: " + ", ".join(f"{k} x{v}" for k, v in by_rule))
    print(
        "CPU per message: "
        + ", ".join(f"{k} {v:.0f} us" for k, v in cpu_us.items())
        + f" (sum {sum(cpu_us.values()):.0f} us: {sum(cpu_us.values()) * result['rate_msgs'] / 1e6:.2f} of 2 cores"
        " at this rate, PostgreSQL not counted)"
    )
    if result["rate_msgs"] < 0.95 * a.rate:
        print(
            f"NOTE: the machine carried {result['rate_msgs']:,.0f} of the {a.rate:,.0f} msg/s asked for (a bare "
            f"consumer's ceiling here is {ceiling:,.0f} msg/s): the figures above are for an overloaded "
            "machine, not for the rate asked for"
        )
    print(
        f"ingest done after {ingest_s:.2f} s, alert engine ({a.engines} process(es)) after {alerts_s:.2f} s"
        + (" (the engine was the bottleneck)" if alerts_s > ingest_s + 0.25 else "")
    )
    t_first = min(sent.values(), default=0.0)
    worst = sorted(((notices[d] - s, s - t_first) for d, s in sent.items() if d in notices), reverse=True)[:5]
    print("slowest notices: " + ", ".join(f"{1000 * w:.0f} ms (sent at +{at:.1f} s)" for w, at in worst))
    return result


if __name__ == "__main__":
    main()
