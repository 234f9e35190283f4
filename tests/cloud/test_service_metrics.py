"""Each service's /metrics, /healthz and /readyz (cloud/runtime/metrics.py) on a real broker and a scratch
database: live figures while it runs, not ready once the broker is gone."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

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
    assert figures[("microfleet_ingest_lag_seconds_count", ())] >= 1
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
