"""`microfleet loadtest` on the NATS tier: the same command that loads mosquitto, given MQTT 3.1.1 and the
three gateways of a real three-node cluster (tests/support/nats.py), with `microfleet nats setup`'s
`ingest` durable and a real `python -m cloud.ingest` process reading it into a scratch database.

- ingest running: every message of the run stored (loss 0), latency measured, exit 0; the report names
  the tier and what JetStream holds after the run (the durable left with nothing pending or unacked).
  That every outbox emptied is not asserted: on nats-server 2.9.10 about one run in four here left one
  device with a SUBACKed `down/#` subscription the gateway did not have (no subscription in its connz,
  no commit mark or probe downlink reached it), so its rows wait for the agent's commit timeout (60 s);
  the report names such devices (`undrained`) and this test prints them;
- ingest not running: the devices' messages wait in the durable, no commit mark empties an outbox: the
  load test reports the loss and exits 1, and its report shows where the messages are.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from cloud.db.migrate import migrate
from cloud.runtime.jetstream import DurableSpec
from cloud.runtime.nats_cli import setup
from tests.nats.marks import requires_nats_server
from tests.support.fleet import Ingest
from tests.support.nats import NatsCluster

pytestmark = [
    pytest.mark.slow,
    requires_nats_server,
]
DEVICES = 20


@dataclass
class Tier:
    cluster: NatsCluster
    ingest: Ingest
    dsn: str
    tmp_path: Path

    @property
    def nats_url(self) -> str:
        return ",".join(self.cluster.nats_urls())

    @property
    def gateways(self) -> str:
        return ",".join(self.cluster.mqtt_url(i) for i in range(len(self.cluster.nodes)))

    def loadtest(self, *, hold: float, settle: float, pids: list[int]) -> tuple[int, str, dict[str, Any]]:
        out = self.tmp_path / "loadtest.json"
        args = ["loadtest", "--mqtt-url", self.gateways, "--mqtt-version", "3.1.1"]
        args += ["--nats-url", self.nats_url, "--database-url", self.dsn, "--devices", str(DEVICES)]
        args += ["--ramp", "100", "--hold", str(hold), "--settle", str(settle)]
        args += ["--data-dir", str(self.tmp_path / "devices"), "--out", str(out)]
        for pid in pids:
            args += ["--pid", str(pid)]
        result = CliRunner().invoke(app, args)
        assert out.exists(), result.output
        return result.exit_code, result.output, json.loads(out.read_text())


@pytest.fixture
def tier(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tier]:
    migrate(database_url)
    with NatsCluster.started(tmp_path / "nats") as cluster:
        monkeypatch.setenv("MICROFLEET_NATS_URL", ",".join(cluster.nats_urls()))
        # the deployment's setup job, before any device connects: only the durable of the service we run
        outcomes = asyncio.run(
            setup(",".join(cluster.nats_urls()), [DurableSpec("ingest")], mqtt_url=cluster.mqtt_url(0))
        )
        assert outcomes == {"ingest": "created"}
        ingest = Ingest(database_url, cluster.mqtt_url(0), tmp_path)
        try:
            yield Tier(cluster, ingest, database_url, tmp_path)
        finally:
            ingest.close()


def test_loadtest_through_the_gateways_stores_everything(tier: Tier) -> None:
    tier.ingest.start(1)
    tier.ingest.wait_subscribed(1)
    code, output, report = tier.loadtest(hold=5, settle=30, pids=[tier.ingest.procs[1].pid])
    assert code == 0, output + tier.ingest.logs()
    assert report["tier"]["tier"] == "nats" and report["tier"]["mqtt_version"] == "3.1.1"
    assert len(report["tier"]["brokers"]) == 3
    assert report["connected_max"] == DEVICES
    assert report["loss"] == 0
    if not report["drained"]:
        print("outboxes not emptied within settle:", report["outbox_left"], "rows on", report["undrained"])
        assert report["undrained"] and report["outbox_left"] > 0
    assert report["sent_messages"] == report["stored_messages"] > DEVICES
    assert report["stored_samples"] == report["sent_samples"] > 0
    assert report["duplicates_stored"] == 0 and report["quarantined"] == 0
    latency = report["latency_ms"]
    assert latency["n"] == report["stored_messages"] and 0 < latency["p50"] <= latency["p99"]
    js = report["tier"]["jetstream"]
    assert js["stream"]["replicas"] == 3 and js["server_version"]
    assert js["durables"]["ingest"]["pending"] == 0 and js["durables"]["ingest"]["unacked"] == 0
    ingest_cpu = [p for p in report["processes"] if p["pid"] == tier.ingest.procs[1].pid]
    assert ingest_cpu and ingest_cpu[0]["cpu_pct"] > 0  # the ingest process did the storing
    assert "NATS JetStream, nats-server" in output and "MQTT 3.1.1 via 3 gateways" in output


def test_loadtest_without_ingest_reports_the_loss_and_where_it_waits(tier: Tier) -> None:
    code, output, report = tier.loadtest(hold=3, settle=3, pids=[])
    assert code == 1, output
    assert "FAIL" in output
    assert report["drained"] is False and len(report["undrained"]) == DEVICES
    # loss counts every seq of the run not stored: the data messages and the status births
    assert report["stored_messages"] == 0 and report["loss"] >= report["sent_messages"] > 0
    assert report["latency_ms"]["n"] == 0
    # the messages wait in the durable for an ingest process: none of them was dropped by the tier
    waiting = report["tier"]["jetstream"]["durables"]["ingest"]
    assert waiting["pending"] + waiting["unacked"] >= report["sent_messages"]
