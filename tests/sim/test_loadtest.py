"""`microfleet loadtest` end to end: real mosquitto + ingest + a scratch database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.loadtest import (
    LoadReport,
    latency_figures,
    latency_text,
    loss_by_device,
    missing_alerts,
    run_loadtest,
)
from cli.loadtest_tier import describe_tier, tier_text
from cli.main import app
from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from cloud.ingest.service import IngestService
from simulators.fleet import Fleet, FleetConfig, rotate_urls
from simulators.scenario import Scenario
from tests.support.services import Mosquitto


@pytest.fixture
def ingest(broker: Mosquitto, database_url: str) -> Iterator[IngestService]:
    migrate(database_url)
    cfg = CloudConfig.from_env(
        {}, database_url=database_url, mqtt_url=broker.url, consumer_id="lt-ingest", mark_delay_s=0.5
    )
    service = IngestService(cfg, housekeeping=False)
    service.start()
    assert service.consumer.subscribed_event.wait(10)
    try:
        yield service
    finally:
        service.stop()


def _scenario(devices: int) -> Scenario:
    return Scenario(name="lt", seed=3, devices=devices, speed=1.0, start=datetime.now(UTC), id_prefix="lt")


def _run(broker: Mosquitto, dsn: str, tmp: Path, settle_s: float = 15, **kw: object) -> LoadReport:
    return asyncio.run(
        run_loadtest(
            _scenario(12),
            mqtt_url=broker.url,
            database_url=dsn,
            data_dir=tmp,
            ramp_per_s=50,
            hold_s=6,
            settle_s=settle_s,
            live=False,
            **kw,  # type: ignore[arg-type]
        )
    )


@pytest.mark.slow
def test_small_loadtest_stores_everything(
    tmp_path: Path, broker: Mosquitto, database_url: str, ingest: IngestService
) -> None:
    r = _run(broker, database_url, tmp_path)
    assert r.connected_max == 12
    assert r.sent_samples > 12 * 3 and r.stored_samples == r.sent_samples
    assert r.loss == 0 and r.stored_messages == r.sent_messages
    assert r.duplicates_stored == 0
    assert 0 < r.latency_ms["p50"] <= r.latency_ms["p95"] <= r.latency_ms["p99"] <= r.latency_ms["max"]
    assert r.processes and r.processes[0]["rss_mb"] > 0


@pytest.mark.slow
def test_loss_is_detected_when_the_cloud_quarantines(
    tmp_path: Path, broker: Mosquitto, database_url: str, ingest: IngestService
) -> None:
    # device 0's clock runs 3 h ahead: the cloud quarantines its data as "in the future" -> lost by seq
    r = _run(broker, database_url, tmp_path, settle_s=5, clock_skew_s={0: 3 * 3600.0})
    assert r.quarantined > 0
    assert r.loss > 0 and set(r.lost_by_device) == {"lt-00000"}


def test_loss_and_missing_alerts_are_pure() -> None:
    assert loss_by_device({"a": 3, "b": 2}, {"a": {0, 1, 2, 7}, "b": {1}}) == {"b": 1}
    assert loss_by_device({"a": 5}, {"a": {3, 4}}, first={"a": 3}) == {}  # an earlier run's seqs: not ours
    assert missing_alerts({"a": frozenset({"O5", "T4"})}, {"a": {"T4"}}) == ["a:O5"]


@pytest.mark.slow
def test_the_default_scenario_measures_latency_and_counts_sent_and_stored_alike(
    tmp_path: Path, broker: Mosquitto, database_url: str, ingest: IngestService
) -> None:
    """`microfleet loadtest` as a user runs it (no scenario file): real latencies, not 0.0 from nothing,
    and the messages it sent are the messages it finds stored (status births are neither)."""
    out = tmp_path / "report.json"
    args = ["loadtest", "--mqtt-url", broker.url, "--database-url", database_url, "--devices", "4"]
    args += ["--ramp", "50", "--hold", "5", "--settle", "15", "--data-dir", str(tmp_path / "d")]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    latency = report["latency_ms"]
    assert latency["n"] > 0 and 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert latency["n"] == report["stored_messages"]
    assert report["sent_messages"] == report["stored_messages"] > 0
    assert "n/a" not in result.output


def test_figures_from_no_samples_say_so() -> None:
    empty = latency_figures(None, 0)
    assert empty == {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    assert latency_text(empty) == "n/a (no samples)"
    some = latency_figures((10.0, 20.0, 30.0, 40.0), 7)
    assert some["n"] == 7 and latency_text(some) == "10.0 / 20.0 / 30.0 / 40.0 (7 messages)"


def test_devices_spread_over_the_gateways_of_a_cluster(tmp_path: Path) -> None:
    assert rotate_urls("mqtt://a:1,mqtt://b:2,mqtt://c:3", 4) == "mqtt://b:2,mqtt://c:3,mqtt://a:1"
    assert rotate_urls("mqtt://a:1", 7) == "mqtt://a:1"
    urls = "mqtt://{device_id}:pw@a:1,mqtt://{device_id}:pw@b:2,mqtt://{device_id}:pw@c:3"
    spread = Fleet(FleetConfig(_scenario(4), urls, tmp_path, spread_brokers=True))
    firsts = [spread._edge_config(i).mqtt_urls[0] for i in range(4)]
    assert firsts == [
        "mqtt://lt-00000:pw@a:1",
        "mqtt://lt-00001:pw@b:2",
        "mqtt://lt-00002:pw@c:3",
        "mqtt://lt-00003:pw@a:1",
    ]
    assert spread._edge_config(1).mqtt_urls[1:] == ("mqtt://lt-00001:pw@c:3", "mqtt://lt-00001:pw@a:1")
    same = Fleet(FleetConfig(_scenario(4), urls, tmp_path))  # microfleet sim: every device starts at a
    assert {same._edge_config(i).mqtt_urls[0].split("@")[1] for i in range(4)} == {"a:1"}


def test_the_report_names_the_tier() -> None:
    mosq = describe_tier("mqtt://u:secret@h:1883", "5", None)
    assert mosq["tier"] == "mqtt" and "secret" not in str(mosq)
    assert tier_text(mosq) == "MQTT broker (MQTT 5 via 1 gateway: mqtt://u:***@h:1883)"
    nats = describe_tier("mqtt://a:1,mqtt://b:2,mqtt://c:3", "3.1.1", "nats://a:4222,nats://b:4222")
    assert nats["tier"] == "nats" and nats["brokers"] == ["mqtt://a:1", "mqtt://b:2", "mqtt://c:3"]
    nats["jetstream"] = {"server_version": "2.9.10", "stream": {"replicas": 3, "leader": "n1", "messages": 0}}
    assert (
        tier_text(nats)
        == "NATS JetStream, nats-server 2.9.10 (MQTT 3.1.1 via 3 gateways); $MQTT_msgs R3, leader n1, 0 kept"
    )
    nats["jetstream"] = {"error": "connect: timeout"}
    assert "state not read: connect: timeout" in tier_text(nats)
