"""How many simulated devices one simulator process holds, and the load they sustain end to end.

    python bench/sim.py [--quick] [--devices 10000] [--active 1000] [--hold 30]

1. Connected: DEVICES real edge agents (shared outbox file) connect to a private mosquitto; we report
   connected, RSS, memory per device, fds. 2. Active: ACTIVE devices in back-to-back real-time sessions
   for HOLD s through a real ingest into a scratch database (`microfleet loadtest` logic); we report
   messages/s, samples/s, loss and latency. The last line is one JSON object (connected, rss_mb, loss...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.loadtest import run_loadtest
from cli.localbroker import Mosquitto
from simulators.cli import raise_fd_limit
from simulators.fleet import Fleet, FleetConfig
from simulators.scenario import Scenario


async def connected(url: str, devices: int) -> dict[str, float]:
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    sc = Scenario(devices=devices, speed=1.0, start=datetime.now(UTC), id_prefix="bench")
    cfg = FleetConfig(sc, url, Path(tempfile.mkdtemp(prefix="mf-bench-sim-")), keepalive_s=120)
    t0 = time.monotonic()
    async with Fleet(cfg) as fleet:
        await fleet.connect(ramp_per_s=2000, wait_s=300)
        ramp_s = time.monotonic() - t0
        await asyncio.sleep(2)
        n = fleet.stats().connected
        rss = proc.memory_info().rss
        fds = len(os.listdir("/proc/self/fd"))
    return {
        "connected": n,
        "rss_mb": rss / 2**20,
        "kib_per_device": (rss - rss0) / 1024 / max(1, n),
        "fds": fds,
        "connect_s": ramp_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--active", type=int, default=1_000)
    ap.add_argument("--hold", type=float, default=30.0)
    a = ap.parse_args()
    if a.quick:
        a.devices, a.active, a.hold = 1_000, 200, 10.0
    soft, hard = raise_fd_limit()
    print(f"open files limit raised to {soft} (hard {hard})")
    broker = Mosquitto()
    broker.start()  # inherits the raised limit
    try:
        c = asyncio.run(connected(broker.url, a.devices))
        print(
            f"connected {c['connected']}/{a.devices} in {c['connect_s']:.1f} s, rss {c['rss_mb']:.0f} MB, "
            f"{c['kib_per_device']:.1f} KiB/device, {c['fds']} fds"
        )
        from cloud.config import CloudConfig
        from cloud.db.migrate import migrate
        from cloud.ingest.service import IngestService
        from tests.support.services import scratch_database

        with scratch_database("mf_bench_sim") as dsn:
            migrate(dsn)
            ingest = IngestService(
                CloudConfig.from_env({}, database_url=dsn, mqtt_url=broker.url, consumer_id="bench-sim"),
                housekeeping=False,
            )
            ingest.start()
            try:
                sc = Scenario(devices=a.active, speed=1.0, start=datetime.now(UTC), id_prefix="load")
                r = asyncio.run(
                    run_loadtest(
                        sc,
                        mqtt_url=broker.url,
                        database_url=dsn,
                        data_dir=Path(tempfile.mkdtemp(prefix="mf-bench-load-")),
                        ramp_per_s=500,
                        hold_s=a.hold,
                        settle_s=60,
                        live=False,
                        watch_pids=[broker.proc.pid] if broker.proc else [],
                    )
                )
            finally:
                ingest.stop()
        print(
            f"active {a.active}: {r.messages_per_s_stored} msg/s, {r.samples_per_s_stored} samples/s stored, "
            f"loss {r.loss}, latency ms {r.latency_ms}"
        )
        print(
            json.dumps(
                {
                    **c,
                    "active_devices": a.active,
                    "samples_sent": r.sent_samples,
                    "samples_stored": r.stored_samples,
                    "samples_per_s": r.samples_per_s_stored,
                    "messages_per_s": r.messages_per_s_stored,
                    "loss": r.loss,
                    "latency_ms": r.latency_ms,
                    "processes": r.processes,
                    "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                }
            )
        )
    finally:
        broker.close()


if __name__ == "__main__":
    main()
