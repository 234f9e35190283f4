"""OTA benchmark: how long a rollout over N simulated devices takes to pass through its waves (zero
soak), and the rate the artifact server delivers.

    python bench/ota.py --devices 1000 10000

Each device is the real OTA client of the edge agent (download over HTTP from the real artifact server,
sha256 + signature checks, A/B install on disk, reboot, health check) behind one MQTT connection (the
runner of tests/cloud/test_ota_rollout.py; pacing 500 jobs in flight keeps the runner's single
subscription under mosquitto's per-client queue of 1,000 messages); the cloud side is the real OTA service on a private
mosquitto and a scratch PostgreSQL database. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from psycopg import AsyncConnection

from cloud.db.migrate import migrate
from cloud.ota import store
from cloud.ota.artifacts import add_release
from cloud.ota.rollout import RolloutPlan
from cloud.ota.service import OtaService, OtaServiceConfig
from tests.cloud.test_ota_rollout import KEY, TRUST, Runner, background, ingesting, seed
from tests.edge.test_ota_support import artifact_server
from tests.support.services import Mosquitto, scratch_database

ARTIFACT_KIB = 16


async def rollout_once(n: int, root: Path) -> float:
    ids = [f"b-{i:05d}" for i in range(n)]
    plan = RolloutPlan(percents=(1, 10, 50, 100), soak_s=0, min_sample=20, max_in_flight=500)
    src = root / "fw.bin"
    src.write_bytes(os.urandom(ARTIFACT_KIB * 1024))
    broker = Mosquitto()
    broker.start()
    try:
        with scratch_database("mf_bench_ota") as dsn:
            migrate(dsn)
            async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
                await seed(conn, ids)
                now = datetime.now(UTC)
                await add_release(
                    conn,
                    root / "store",
                    src,
                    version="9.0.0",
                    version_code=1,
                    models=("mf-home-1",),
                    key=KEY,
                    now=now,
                )
                with artifact_server(root / "store") as (base, _):
                    runner = Runner(broker.url, root / "devices", ids, set())
                    service = OtaService(OtaServiceConfig(dsn, broker.url, base, tick_s=0.2))
                    with ingesting(dsn, broker.url):
                        async with background(runner.run(), service.run()):
                            await asyncio.wait_for(service.subscribed.wait(), 10)
                            t0 = time.perf_counter()
                            rid = await store.create_rollout(
                                conn,
                                "9.0.0",
                                store.Targets(),
                                plan,
                                store=root / "store",
                                trust=TRUST,
                                now=now,
                            )
                            while True:
                                row = await (
                                    await conn.execute(
                                        "SELECT status FROM ota_rollouts WHERE rollout_id = %s", (rid,)
                                    )
                                ).fetchone()
                                if row and row[0] == "completed":
                                    return time.perf_counter() - t0
                                if time.perf_counter() - t0 > 1800:
                                    raise TimeoutError("rollout did not complete in 30 min")
                                await asyncio.sleep(0.2)
    finally:
        broker.close()
    raise AssertionError("unreachable")


async def artifact_rate(root: Path, mib: int = 256, clients: int = 4) -> float:
    store_dir = root / "rate"
    store_dir.mkdir()
    (store_dir / "big.bin").write_bytes(os.urandom(mib * 1024 * 1024))
    with artifact_server(store_dir) as (base, _):
        async with httpx.AsyncClient(timeout=60) as http:

            async def one() -> int:
                got = 0
                async with http.stream("GET", f"{base}/big.bin") as r:
                    async for chunk in r.aiter_bytes():
                        got += len(chunk)
                return got

            t0 = time.perf_counter()
            total = sum(await asyncio.gather(*(one() for _ in range(clients))))
            return total / (1024 * 1024) / (time.perf_counter() - t0)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, nargs="+", default=[1000, 10000])
    args = ap.parse_args()
    results: dict[int, float] = {}
    for n in args.devices:
        with tempfile.TemporaryDirectory() as tmp:
            results[n] = await rollout_once(n, Path(tmp))
        print(
            f"rollout over {n} devices (4 waves, zero soak): {results[n]:.1f} s ({n / results[n]:.0f} devices/s)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        rate = await artifact_rate(Path(tmp))
    print(f"artifact server (uvicorn + Starlette FileResponse, 4 clients, loopback): {rate:.0f} MiB/s")
    n = max(results)
    print(
        json.dumps(
            {
                "devices": n,
                "rollout_s": round(results[n], 2),
                "rollouts": {str(k): round(v, 2) for k, v in results.items()},
                "artifact_mb_per_s": round(rate, 1),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
