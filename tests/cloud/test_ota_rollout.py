"""Rollouts end to end on real Mosquitto and PostgreSQL, with the real OTA client code of the agent run
by a lightweight runner (one MQTT connection for all devices, one OtaClient per device on its own data
folder; its HTTP downloads hit the real artifact server). Plus the pure planner and the cloud-side
refusals (tampered artifact, wrong signature, downgrade below the anti-rollback number)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from psycopg import AsyncConnection

from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from cloud.ingest.service import IngestService
from cloud.ota import store
from cloud.ota.artifacts import ReleaseRefused, add_release
from cloud.ota.rollout import (
    Advance,
    Complete,
    Dispatch,
    GateMet,
    Pause,
    RolloutPlan,
    RolloutView,
    WaveCounts,
    assign_waves,
    decide,
)
from cloud.ota.service import OtaService, OtaServiceConfig
from contract import topics
from contract.codec import encode
from contract.messages import OtaReport
from contract.mqtturl import parse_mqtt_url
from contract.signing import SigningKey, TrustStore
from edge.clock import SystemClock
from edge.ota.client import OtaClient, prepare_boot
from edge.ota.planner import OtaSettings
from tests.edge.test_ota_support import artifact_server
from tests.support.services import Mosquitto

KEY = SigningKey.generate()
TRUST = TrustStore([KEY.trusted()])
NOW = datetime(2026, 3, 1, tzinfo=UTC)
SETTINGS = OtaSettings(
    retry_min_s=0.05, retry_max_s=0.5, stall_timeout_s=5.0, health_timeout_s=5.0, progress_step=1.0
)


# -- the pure planner --------------------------------------------------------------------------------


def test_waves_are_cumulative_stable_and_start_with_canaries() -> None:
    ids = [f"d{i:04d}" for i in range(1000)]
    plan = RolloutPlan(canaries=("d0007", "d0999"), percents=(1, 10, 50, 100))
    waves = assign_waves("7", ids, plan)
    assert waves[0] == ["d0007", "d0999"]
    assert [len(w) for w in waves] == [2, 10, 90, 399, 499]
    assert sorted(itertools.chain.from_iterable(waves)) == ids
    assert waves == assign_waves("7", list(reversed(ids)), plan)


def test_error_gate_needs_its_minimum_sample_then_pauses() -> None:
    plan = RolloutPlan(percents=(100,), error_ratio=0.02, min_sample=20, soak_s=0)
    view = RolloutView("running", 0)
    few = WaveCounts(100, {"failed": 3, "succeeded": 10, "sent": 87})
    assert not any(isinstance(d, Pause) for d in decide(plan, view, [few], NOW))
    many = WaveCounts(100, {"failed": 3, "succeeded": 30, "sent": 67})
    [pause] = decide(plan, view, [many], NOW)
    assert isinstance(pause, Pause) and "3 of 33" in pause.reason
    resumed = RolloutView("running", 0, error_baseline={0: 3})  # a resume acknowledges them
    assert not any(isinstance(d, Pause) for d in decide(plan, resumed, [many], NOW))


def test_success_gate_soak_and_pacing() -> None:
    plan = RolloutPlan(percents=(50, 100), success_ratio=0.9, soak_s=60, max_in_flight=5)
    waves = [WaveCounts(10, {"succeeded": 9, "failed": 0, "sent": 1}), WaveCounts(10, {"pending": 10})]
    [met] = decide(plan, RolloutView("running", 0), waves, NOW)
    assert met == GateMet(0, NOW)
    assert decide(plan, RolloutView("running", 0, NOW), waves, NOW + timedelta(seconds=59)) == []
    assert decide(plan, RolloutView("running", 0, NOW), waves, NOW + timedelta(seconds=60)) == [Advance(1)]
    assert decide(plan, RolloutView("running", 1), waves, NOW) == [Dispatch(1, 5)]
    done = [waves[0], WaveCounts(10, {"succeeded": 10})]
    assert decide(plan, RolloutView("running", 1, NOW - timedelta(hours=1)), done, NOW) == [Complete()]
    assert decide(plan, RolloutView("paused", 1), waves, NOW) == []


# -- the fleet -----------------------------------------------------------------------------------------


class Runner:
    """N devices' OTA clients behind one MQTT connection. A "reboot" re-creates the device's client from
    its boot record, exactly as the agent does. `failing` devices fail their health check."""

    def __init__(self, url: str, root: Path, ids: list[str], failing: set[str]) -> None:
        self.url, self.root, self.ids, self.failing = url, root, ids, failing
        self.clients: dict[str, OtaClient] = {}
        self.seq = dict.fromkeys(ids, 0)
        self.out: asyncio.Queue[OtaReport] = asyncio.Queue(100_000)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), limits=httpx.Limits(max_connections=50))
        self.connected = asyncio.Event()
        self.connected.set()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: asyncio.Queue[str] = asyncio.Queue()

    def boot(self, device_id: str) -> None:
        data = self.root / device_id

        async def health() -> str | None:
            return "injected: sensor self-test failed" if device_id in self.failing else None

        def emit(r: OtaReport) -> None:
            self.seq[device_id] += 1
            self.out.put_nowait(
                r.__class__(**{**{f: getattr(r, f) for f in r.__struct_fields__}, "seq": self.seq[device_id]})
            )

        client = OtaClient(
            device_id=device_id,
            data_dir=data,
            model="mf-home-1",
            hw_rev="A",
            boot=prepare_boot(data, "1.0.0", SETTINGS),
            trust=TRUST,
            clock=SystemClock(),
            emit=emit,
            connected=self.connected,
            request_restart=lambda: self.restarts.put_nowait(device_id),
            health_check=health,
            settings=SETTINGS,
            http=self.http,
        )
        self.clients[device_id] = client
        self.tasks[device_id] = asyncio.create_task(client.run())

    async def run(self) -> None:
        addr = parse_mqtt_url(self.url)
        for d in self.ids:
            self.boot(d)
        async with aiomqtt.Client(
            addr.host, addr.port, protocol=aiomqtt.ProtocolVersion.V5, max_queued_incoming_messages=50_000
        ) as client:
            await client.subscribe("mf/v1/+/down/ota", qos=1)

            async def receive() -> None:
                async for m in client.messages:
                    device_id, _ = topics.parse_downlink(str(m.topic))
                    await self.clients[device_id].on_downlink(str(m.topic), bytes(m.payload))

            async def send() -> None:
                while True:
                    r = await self.out.get()
                    await client.publish(topics.uplink(r.device_id, topics.Uplink.OTA), encode(r), qos=1)

            async def reboot() -> None:
                while True:
                    d = await self.restarts.get()
                    self.tasks[d].cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self.tasks[d]
                    self.boot(d)

            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(receive()), tg.create_task(send()), tg.create_task(reboot())
            finally:
                for t in self.tasks.values():
                    t.cancel()
                await asyncio.gather(*self.tasks.values(), return_exceptions=True)
                await self.http.aclose()


@contextlib.asynccontextmanager
async def background(*coros: Any) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.contextmanager
def ingesting(database_url: str, broker_url: str) -> Iterator[IngestService]:
    """The ingest service, which stores the devices' OTA reports the rollout service reads."""
    cfg = CloudConfig(
        database_url=database_url, mqtt_url=broker_url, consumer_id=f"ota-ingest-{uuid.uuid4().hex[:6]}"
    )
    service = IngestService(cfg, housekeeping=False)
    service.start()
    assert service.consumer.subscribed_event.wait(10)
    try:
        yield service
    finally:
        service.stop()


async def wait_until(
    conn: AsyncConnection[Any], sql: str, args: tuple[Any, ...], deadline_s: float = 30.0
) -> Any:
    async with asyncio.timeout(deadline_s):
        while True:
            row = await (await conn.execute(sql, args)).fetchone()
            if row is not None and row[0]:
                return row
            await asyncio.sleep(0.1)


async def seed(conn: AsyncConnection[Any], ids: list[str], fw: str = "1.0.0") -> None:
    async with (
        conn.cursor() as cur,
        cur.copy("COPY devices (device_id, model, hw_rev, fw_version) FROM STDIN") as copy,
    ):
        for d in ids:
            await copy.write_row((d, "mf-home-1", "A", fw))


async def test_cloud_refuses_tampered_unsigned_and_downgraded_releases(
    database_url: str, tmp_path: Path
) -> None:
    migrate(database_url)
    src = tmp_path / "fw.bin"
    src.write_bytes(b"firmware" * 1000)
    art = tmp_path / "store"
    plan = RolloutPlan(percents=(100,))
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        await seed(conn, ["d1", "d2"], fw="2.0.0")
        await add_release(
            conn, art, src, version="2.0.0", version_code=5, models=("mf-home-1",), key=KEY, now=NOW
        )
        with pytest.raises(
            ReleaseRefused, match=r"anti-rollback: version_code 4 is below 5 of release 2.0.0"
        ):
            await add_release(
                conn, art, src, version="1.9.0", version_code=4, models=("mf-home-1",), key=KEY, now=NOW
            )
        with pytest.raises(ReleaseRefused, match=r"not the expected"):
            await add_release(
                conn,
                art,
                src,
                version="2.1.0",
                version_code=5,
                models=("mf-home-1",),
                key=KEY,
                now=NOW,
                expected_sha256="0" * 64,
            )
        rel = await add_release(
            conn, art, src, version="2.1.0", version_code=6, models=("mf-home-1",), key=KEY, now=NOW
        )
        # signed by a key the devices do not trust
        other = TrustStore([SigningKey.generate().trusted()])
        with pytest.raises(ReleaseRefused, match=r"manifest refused .*unknown key"):
            await store.create_rollout(conn, "2.1.0", store.Targets(), plan, store=art, trust=other, now=NOW)
        # the artifact changed on disk after `release add`
        path = art / rel.manifest.artifact
        good = path.read_bytes()
        path.write_bytes(good[:-1] + b"X")
        with pytest.raises(ReleaseRefused, match=r"tampered with or corrupted"):
            await store.create_rollout(conn, "2.1.0", store.Targets(), plan, store=art, trust=TRUST, now=NOW)
        path.write_bytes(good)
        rid = await store.create_rollout(
            conn, "2.1.0", store.Targets(), plan, store=art, trust=TRUST, now=NOW
        )
        # a downgrade of devices that run 2.1.0 (code 6) to a release with code 5
        await conn.execute("UPDATE devices SET fw_version = '2.1.0'")
        with pytest.raises(ReleaseRefused, match=r"would refuse release 2.0.0.*below the device's floor 6"):
            await store.create_rollout(conn, "2.0.0", store.Targets(), plan, store=art, trust=TRUST, now=NOW)
        await conn.execute("UPDATE ota_device_jobs SET state = 'succeeded' WHERE rollout_id = %s", (rid,))
        with pytest.raises(ReleaseRefused, match=r"cannot roll back to 2.0.0: its version_code 5 is below 6"):
            await store.rollback(conn, rid, plan, store=art, trust=TRUST, now=NOW)


@pytest.mark.slow
async def test_rollout_over_1000_agents_pauses_on_errors_then_resume_and_cancel(
    broker: Mosquitto, database_url: str, tmp_path: Path
) -> None:
    migrate(database_url)
    ids = [f"ota-{i:04d}" for i in range(1000)]
    plan = RolloutPlan(
        percents=(2, 12, 50, 100),
        success_ratio=0.9,
        error_ratio=0.02,
        min_sample=20,
        soak_s=0,
        max_in_flight=200,
    )
    waves = assign_waves("1", ids, plan)  # the first rollout gets id 1 in a fresh database
    failing = {d for i, d in enumerate(sorted(waves[1])) if i % 20 == 0}  # 5% of wave 1 (the second wave)
    assert len(failing) == 5
    src = tmp_path / "fw.bin"
    src.write_bytes(bytes(range(256)) * 64)
    art = tmp_path / "store"
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        await seed(conn, ids)
        await add_release(
            conn, art, src, version="1.1.0", version_code=1, models=("mf-home-1",), key=KEY, now=NOW
        )
        with artifact_server(art) as (base, _):
            runner = Runner(broker.url, tmp_path / "devices", ids, failing)
            service = OtaService(OtaServiceConfig(database_url, broker.url, base, tick_s=0.2))
            with ingesting(database_url, broker.url):
                async with background(runner.run(), service.run()):
                    async with asyncio.timeout(10):
                        await service.subscribed.wait()
                    rid = await store.create_rollout(
                        conn, "1.1.0", store.Targets(), plan, store=art, trust=TRUST, now=datetime.now(UTC)
                    )
                    assert rid == 1
                    (reason,) = await wait_until(
                        conn,
                        "SELECT status_reason FROM ota_rollouts WHERE rollout_id = %s AND status = 'paused'",
                        (rid,),
                        60,
                    )
                    assert "error gate: wave 1" in reason
                    counts = await store.counts(conn, rid)
                    assert counts[0].succeeded == len(waves[0])
                    assert counts[1].n("rolled_back") >= 1
                    assert all(c.pending == c.size for c in counts[2:])  # nothing reached the later waves
                    # jobs already out finish while paused; still nothing is sent to wave 2
                    await wait_until(
                        conn,
                        "SELECT count(*) = 0 FROM ota_device_jobs WHERE rollout_id = %s AND wave = 1 AND state NOT IN ('succeeded', 'rolled_back', 'pending')",
                        (rid,),
                        30,
                    )
                    counts = await store.counts(conn, rid)
                    assert (
                        counts[1].n("rolled_back") + counts[1].succeeded + counts[1].pending == counts[1].size
                    )
                    assert all(c.pending == c.size for c in counts[2:])
                    # resume: the failures are acknowledged, the wave finishes, the next waves start
                    await store.resume(conn, rid)
                    await wait_until(
                        conn,
                        "SELECT count(*) >= 100 FROM ota_device_jobs WHERE rollout_id = %s AND wave = 2 AND state = 'succeeded'",
                        (rid,),
                        60,
                    )
                    # cancel: pending jobs at once, sent ones with the device's confirmation or by finishing
                    r = await store.cancel(conn, rid)
                    assert r.view.status == "cancelling"
                    counts = await store.counts(conn, rid)
                    assert all(c.pending == 0 for c in counts)
                    await wait_until(
                        conn,
                        "SELECT status = 'cancelled' FROM ota_rollouts WHERE rollout_id = %s",
                        (rid,),
                        30,
                    )
                    counts = await store.counts(conn, rid)
                    assert counts[3].succeeded == 0 and counts[3].n("cancelled") == counts[3].size
                    states = await (
                        await conn.execute(
                            "SELECT DISTINCT state FROM ota_device_jobs WHERE rollout_id = %s", (rid,)
                        )
                    ).fetchall()
                    assert {s for (s,) in states} <= {"succeeded", "rolled_back", "cancelled"}
                    # the rolled back devices run the old firmware, and say so
                    fw = await (
                        await conn.execute(
                            "SELECT DISTINCT r.fw_version FROM ota_reports r WHERE r.state = 'rolled_back'"
                        )
                    ).fetchall()
                    assert fw == [("1.0.0",)]
                    n_reports = (
                        await (await conn.execute("SELECT count(*) FROM ota_reports")).fetchone() or [0]
                    )[0]
                    assert n_reports > 1000


async def test_jobs_without_a_final_report_expire_at_their_deadline(
    broker: Mosquitto, database_url: str, tmp_path: Path
) -> None:
    """Devices that received their job and went silent (lost, unplugged): at the job deadline the service
    marks their jobs failed and retryable, with the reason, and the error gate sees them. Jobs that
    reported a final state are left alone. The clock is the service's own (moved, not waited for)."""
    migrate(database_url)
    src = tmp_path / "fw.bin"
    src.write_bytes(b"firmware" * 100)
    art = tmp_path / "store"
    now = [datetime.now(UTC)]
    plan = RolloutPlan(percents=(100,), job_deadline_s=3600, error_ratio=0.5, min_sample=2, soak_s=0)
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        await seed(conn, ["quiet-1", "quiet-2", "done-1"])
        await add_release(
            conn, art, src, version="1.1.0", version_code=2, models=("mf-home-1",), key=KEY, now=now[0]
        )
        rid = await store.create_rollout(
            conn, "1.1.0", store.Targets(), plan, store=art, trust=TRUST, now=now[0]
        )
        service = OtaService(
            OtaServiceConfig(database_url, broker.url, "http://127.0.0.1:1/a", tick_s=0.05),
            clock=lambda: now[0],
        )
        async with background(service.run()):
            sent = "SELECT count(*) = 3 FROM ota_device_jobs WHERE rollout_id = %s AND state = 'sent'"
            await wait_until(conn, sent, (rid,))
            await conn.execute("UPDATE ota_device_jobs SET state = 'succeeded' WHERE device_id = 'done-1'")
            now[0] += timedelta(minutes=59)  # before the deadline: nothing expires
            await asyncio.sleep(0.3)
            counts = await (
                await conn.execute(
                    "SELECT state, count(*) FROM ota_device_jobs WHERE rollout_id = %s GROUP BY 1 ORDER BY 1",
                    (rid,),
                )
            ).fetchall()
            assert counts == [("sent", 2), ("succeeded", 1)]
            now[0] += timedelta(minutes=2)  # past it
            failed = "SELECT count(*) = 2 FROM ota_device_jobs WHERE rollout_id = %s AND state = 'failed'"
            await wait_until(conn, failed, (rid,))
            paused = "SELECT status = 'paused' FROM ota_rollouts WHERE rollout_id = %s"
            await wait_until(conn, paused, (rid,))  # 2 failed of 3 finished: over the 50 % error gate
        rows = await (
            await conn.execute(
                "SELECT device_id, state, retryable, reason FROM ota_device_jobs WHERE rollout_id = %s ORDER BY 1",
                (rid,),
            )
        ).fetchall()
        assert rows == [
            ("done-1", "succeeded", None, None),
            ("quiet-1", "failed", True, "no final report before the job deadline"),
            ("quiet-2", "failed", True, "no final report before the job deadline"),
        ]
