"""Each service's /metrics, /healthz and /readyz (cloud/runtime/metrics.py) on a real broker and a scratch
database: live figures while it runs, not ready once the broker is gone."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench._common import Publisher, fleet_traffic, wait_until
from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from cloud.ingest.service import IngestService
from tests.support.services import Mosquitto

pytestmark = pytest.mark.slow


@pytest.fixture
def dsn(database_url: str) -> str:
    migrate(database_url)
    return database_url


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    status, body = get(base + "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(base: str, name: str, **labels: str) -> float:
    return samples(base).get((name, tuple(sorted(labels.items()))), float("nan"))


def ready(base: str) -> tuple[int, dict[str, object]]:
    status, body = get(base + "/readyz")
    return status, json.loads(body)


@pytest.fixture
def ingest(broker: Mosquitto, dsn: str) -> Iterator[IngestService]:
    config = CloudConfig(
        database_url=dsn, mqtt_url=broker.url, consumer_id="ingest-m1", batch_max_delay_s=0.02
    )
    svc = IngestService(config, housekeeping=False, metrics_port=0)
    svc.start()
    try:
        assert svc.consumer.subscribed_event.wait(10), "consumer did not subscribe"
        yield svc
    finally:
        svc.stop(grace_s=3, leave=False)


def test_ingest_serves_live_figures_and_readiness(broker: Mosquitto, dsn: str, ingest: IngestService) -> None:
    assert ingest.metrics_server is not None
    base = ingest.metrics_server.url
    wait_until(lambda: ready(base)[0] == 200, 10, what="ingest ready")
    assert ready(base)[1]["checks"] == {"broker": True, "database": True}

    traffic = fleet_traffic(5, 2, batches=3, samples_per_batch=10)
    bad = [("mf/v1/dev-x/up/samples", b"not json %d" % i) for i in range(3)]
    pub = Publisher(broker.url, client_id="metrics-pub")
    try:
        pub.publish_all(traffic.messages + bad)
    finally:
        pub.close()
    total = traffic.uplinks + len(bad)
    wait_until(
        lambda: value(base, "microfleet_ingest_messages_total") == total, 20, what="every message counted"
    )
    figures = samples(base)
    assert figures[("microfleet_ingest_stored_total", ())] == traffic.uplinks
    assert figures[("microfleet_ingest_samples_total", ())] == traffic.samples
    assert figures[("microfleet_ingest_quarantined_total", (("reason", "not_json"),))] == len(bad)
    assert figures[("microfleet_ingest_batch_messages_sum", ())] == total
    assert figures[("microfleet_ingest_batch_messages_count", ())] >= 1
    assert figures[("microfleet_ingest_commit_seconds_count", ())] >= 1
    assert figures[("microfleet_ingest_commit_lag_seconds_count", ())] >= 1
    assert figures[("microfleet_ingest_pending_messages", ())] == 0
    assert figures[("microfleet_ready", (("check", "broker"),))] == 1
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select count(*) from quarantine where reason = 'not_json'").fetchone()
    assert row == (len(bad),)  # the figure is what the database holds

    broker.stop()
    wait_until(lambda: ready(base)[0] == 503, 10, what="not ready without the broker")
    _, body = ready(base)
    assert body["failing"] == ["broker"] and body["ready"] is False
    assert get(base + "/healthz")[0] == 200  # alive, though not ready
    assert value(base, "microfleet_ready", check="broker") == 0
    broker.start()
    wait_until(lambda: ready(base)[0] == 200, 15, what="ready again once the broker is back")
    assert value(base, "microfleet_mqtt_connects_total") >= 2


def test_metrics_server_unknown_path_and_database_down() -> None:
    from prometheus_client import CollectorRegistry

    from cloud.runtime.metrics import MetricsServer, dsn_check

    server = MetricsServer(
        "probe",
        CollectorRegistry(),
        port=0,
        checks={"database": dsn_check("postgresql://postgres@127.0.0.1:1/none", timeout_s=1)},
    )
    server.start()
    try:
        assert get(server.url + "/nothing")[0] == 404
        status, body = ready(server.url)
        assert status == 503 and body["failing"] == ["database"]
        assert value(server.url, "microfleet_ready", check="database") == 0
    finally:
        server.stop()


def test_alert_engine_serves_live_figures_and_readiness(broker: Mosquitto, dsn: str) -> None:
    from datetime import UTC, datetime

    from cloud.alerts.service import AlertService
    from tests.cloud.test_alerts_engine_support import (
        Clock,
        FakeDevice,
        Uplinks,
        engine_config,
        overuse_days,
    )

    noon = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
    clock = Clock(noon)
    device = FakeDevice(broker.url, "over-m", clock)
    uplinks = Uplinks(broker.url)
    svc = AlertService(engine_config(broker.url, dsn, "alerts-m1"), clock=clock, gate=False, metrics_port=0)
    try:
        svc.start()
        assert svc.consumer.subscribed_event.wait(10) and svc.metrics_server is not None
        base = svc.metrics_server.url
        wait_until(lambda: ready(base)[0] == 200, 10, what="alert engine ready")
        sessions = overuse_days("over-m", noon, range(-5, 1))  # O5: one notice to the device
        uplinks.send(sessions)
        uplinks.client.publish("mf/v1/over-m/up/event", b"{not json", qos=1).wait_for_publish(10)
        device.wait(lambda d: len(d.notices) == 1)
        wait_until(
            lambda: value(base, "microfleet_alerts_notices_sent_total") == 1, 10, what="the notice counted"
        )
        wait_until(
            # the sessions, the bad message, the device's NOTICE_SHOWN and NOTICE_ACK
            lambda: value(base, "microfleet_alerts_messages_total") == len(sessions) + 3,
            10,
            what="every message counted",
        )
        figures = samples(base)
        assert figures[("microfleet_alerts_refused_total", (("reason", "not_json"),))] == 1
        assert figures[("microfleet_alerts_evaluated_total", ())] >= len(sessions)
        assert figures[("microfleet_alerts_raised_total", ())] >= 1
        assert figures[("microfleet_alerts_batch_messages_count", ())] >= 1
        assert figures[("microfleet_alerts_notices_refused_total", ())] == 0

        broker.stop()
        wait_until(lambda: ready(base)[0] == 503, 10, what="not ready without the broker")
        assert ready(base)[1]["failing"] == ["broker"]
    finally:
        svc.stop(leave=False)
        uplinks.client.loop_stop()
        device.client.loop_stop()


async def test_ota_service_serves_rollout_progress_and_readiness(
    broker: Mosquitto, dsn: str, tmp_path: Path
) -> None:
    import asyncio
    from datetime import UTC, datetime

    from psycopg import AsyncConnection

    from cloud.ota import store
    from cloud.ota.artifacts import add_release
    from cloud.ota.rollout import RolloutPlan
    from cloud.ota.service import OtaService, OtaServiceConfig
    from tests.cloud.test_ota_rollout import KEY, TRUST, background, seed

    src = tmp_path / "fw.bin"
    src.write_bytes(b"firmware" * 100)
    art = tmp_path / "store"
    now = datetime.now(UTC)
    plan = RolloutPlan(percents=(100,), soak_s=0)
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        await seed(conn, ["m-1", "m-2", "m-3"])
        await add_release(
            conn, art, src, version="1.1.0", version_code=2, models=("mf-home-1",), key=KEY, now=now
        )
        rid = await store.create_rollout(
            conn, "1.1.0", store.Targets(), plan, store=art, trust=TRUST, now=now
        )
    service = OtaService(
        OtaServiceConfig(dsn, broker.url, "http://127.0.0.1:1/a", tick_s=0.05), metrics_port=0
    )
    async with background(service.run()):
        async with asyncio.timeout(10):
            await service.subscribed.wait()
        assert service.metrics_server is not None
        base = service.metrics_server.url

        def progressed() -> bool:
            f = samples(base)
            return (
                f.get(("microfleet_ota_rollout_jobs", (("rollout", str(rid)), ("state", "sent")))) == 3
                and f.get(
                    ("microfleet_ota_jobs_published_total", (("action", "install"), ("outcome", "sent")))
                )
                == 3
            )

        await asyncio.to_thread(wait_until, progressed, 10, what="the rollout's progress")
        figures = await asyncio.to_thread(samples, base)
        assert figures[("microfleet_ota_rollouts", (("status", "running"),))] == 1
        assert figures[("microfleet_ota_rollout_wave", (("rollout", str(rid)),))] == 0
        assert figures[("microfleet_ota_ticks_total", ())] >= 1
        assert (await asyncio.to_thread(ready, base))[0] == 200
        broker.stop()
        await asyncio.to_thread(
            wait_until, lambda: ready(base)[0] == 503, 10, what="not ready without the broker"
        )
        assert (await asyncio.to_thread(ready, base))[1]["failing"] == ["broker"]
