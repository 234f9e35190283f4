"""docker-compose watches the services: ingest, alerts and ota serve /metrics and /readyz on the port
compose gives them, their healthchecks ask /readyz there, Prometheus scrapes each of them (and the API),
and Grafana has the Prometheus datasource the platform dashboard's service panels use."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load(path: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / path).read_text())
    return data


def test_services_are_healthy_when_ready_and_scraped_by_prometheus() -> None:
    services = load("docker-compose.yml")["services"]
    scrape = {job["job_name"]: job for job in load("deploy/prometheus/prometheus.yml")["scrape_configs"]}
    for name in ("ingest", "alerts", "ota"):
        env = services[name]["environment"]
        port = int(env["MICROFLEET_METRICS_PORT"])
        assert env["MICROFLEET_METRICS_HOST"] == "0.0.0.0", (
            f"{name}: Prometheus scrapes from another container"
        )
        check = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/readyz" in check, name
        (sd,) = scrape[name]["dns_sd_configs"]  # every replica of a scaled service
        assert sd["names"] == [name] and sd["port"] == port
    api = services["api"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    (port,) = re.findall(r"--port (\d+)", " ".join(api["command"]))
    assert scrape["api"]["static_configs"][0]["targets"] == [f"api:{port}"]
    assert services["simulator"]["depends_on"]["ingest"]["condition"] == "service_healthy"
    prom = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prom["image"])


def test_grafana_has_the_prometheus_datasource() -> None:
    (source,) = load("deploy/grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    assert (source["type"], source["uid"]) == ("prometheus", "microfleet-prometheus")
    grafana = load("docker-compose.yml")["services"]["grafana"]
    (var,) = re.findall(r"\$\{(\w+)\}", source["url"])
    assert grafana["environment"][var] == "http://prometheus:9090"
