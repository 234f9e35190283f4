"""The platform dashboard's Prometheus panels read metrics the services really export: every metric name
in their PromQL is a sample of a service's registry (ingest, alerts, OTA, the API, readiness)."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from cloud.alerts.metrics import AlertMetrics, Live
from cloud.api.metrics import ApiMetrics
from cloud.dashboards import platform, prom
from cloud.dashboards.catalog import rendered
from cloud.ingest.metrics import IngestMetrics
from cloud.ota.metrics import OtaMetrics
from cloud.ota.rollout import WaveCounts
from cloud.runtime.metrics import MetricsServer
from tests.support.services import ROOT


def exported() -> set[str]:
    """Every sample name the services export, each registry exercised once so labelled series exist."""
    ingest = IngestMetrics(
        lambda: {"pending": 0, "redeliveries": 0, "marks_sent": 0, "marks_failed": 0, "connects": 1}
    )
    now = datetime.now(UTC)
    ingest.batch(
        messages=2, stored=1, samples=3, quarantined=Counter(not_json=1), commit_s=0.01, attempts=1,
        first_at=1.0, newest=now, now=now,
    )  # fmt: skip
    alerts = AlertMetrics(lambda: Live(0, 1, {"not_json": 1}, 1, 0, 0, 0, 0, 1))
    alerts.batch(messages=1, decisions=1, applied=1, seconds=0.01)
    ota = OtaMetrics()
    ota.published.labels(action="install", outcome="sent").inc()
    ota.progress({"running": 1}, [(1, 0, [WaveCounts(3, {"sent": 3})])])
    api = ApiMetrics()
    api.protocol_published("sent", 2, 1)
    ready = CollectorRegistry()
    MetricsServer("t", ready, port=0, checks={"broker": lambda: True})
    text = b"".join(
        generate_latest(r) for r in (ingest.registry, alerts.registry, ota.registry, api.registry, ready)
    )
    return {
        line.split("{")[0].split(" ")[0] for line in text.decode().splitlines() if not line.startswith("#")
    }


def test_every_promql_metric_is_exported_by_a_service() -> None:
    names = exported()
    used = {
        m for panel in prom.PANELS for expr, _ in panel.promql for m in re.findall(r"microfleet_\w+", expr)
    }
    assert used and used <= names, f"not exported by any service: {sorted(used - names)}"
    assert all(p in platform.DASHBOARD.panels for p in prom.PANELS)


def test_prometheus_panels_use_the_provisioned_prometheus_datasource() -> None:
    (source,) = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text()
    )["datasources"]
    board = json.loads(rendered()["mf-platform.json"])
    targets = [t for p in board["panels"] for t in p["targets"] if t["datasource"]["type"] == "prometheus"]
    assert len(targets) == sum(len(p.promql) for p in prom.PANELS)
    for t in targets:
        assert t["datasource"] == {"type": source["type"], "uid": source["uid"]}
        assert t["expr"].strip() and "rawSql" not in t
