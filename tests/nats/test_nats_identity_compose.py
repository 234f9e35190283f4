"""docker-compose.yml's `cluster` profile (issue 13): three NATS nodes and the one-shot that renders their
users; deploy/nats/nats.conf with an include rendered by cloud/identity/nats_users.py is a valid server
configuration (`nats-server -t` parses and checks it without starting)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud.identity import nats_policy
from cloud.identity.nats_users import NatsIdentities, write_auth
from tests.nats.marks import requires_nats_server
from tests.support.nats import nats_server_binary

ROOT = Path(__file__).resolve().parents[2]
NODES = ("nats-1", "nats-2", "nats-3")
CLUSTER_SERVICES = ("nats-setup", "ingest-cluster", "alerts-cluster", "simulator-cluster")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_cluster_profile_has_three_nodes_and_their_users() -> None:
    services = compose()["services"]
    cluster = {name for name, svc in services.items() if "cluster" in (svc.get("profiles") or [])}
    assert cluster == {"nats-auth", *NODES, *CLUSTER_SERVICES}
    for name in NODES:
        node = services[name]
        assert node["image"].endswith("nats:2.10}")  # overridable, the official image by default
        assert node["environment"]["NATS_NAME"] == name
        mounts = node["volumes"]
        assert "./deploy/nats/nats.conf:/etc/nats/nats.conf:ro" in mounts
        assert "nats-auth:/etc/nats/auth:ro" in mounts
        assert f"{name}-data:/data" in mounts  # a JetStream store of its own
        assert node["depends_on"] == {"nats-auth": {"condition": "service_completed_successfully"}}
    script = " ".join(services["nats-auth"]["command"])
    for role in (*nats_policy.DURABLES, "svc-ota", nats_policy.ADMIN_ROLE):
        assert role.removeprefix("svc-") in script
    # no service of the single-box stack is in the profile (mosquitto stays the default)
    assert "cluster" not in (services["broker"].get("profiles") or [])


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_compose_resolves_the_cluster_profile() -> None:
    out = subprocess.run(
        ["docker-compose", "--profile", "cluster", "config", "--services"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert set(NODES) | set(CLUSTER_SERVICES) | {"nats-auth", "broker"} <= set(out.stdout.split())


@requires_nats_server
def test_node_config_with_rendered_users_is_valid(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text((ROOT / "deploy/nats/nats.conf").read_text().replace("/data", str(tmp_path / "js")))
    ids = NatsIdentities()
    for role in nats_policy.service_roles():
        ids.provision_service(role, role, "a-long-deployment-secret")
    ids.provision_device("dev-1")
    write_auth(ids, [tmp_path / "auth" / "auth.conf"])
    binary = nats_server_binary()
    assert binary is not None
    env = {**os.environ, "NATS_NAME": "nats-1"}
    ok = subprocess.run([binary, "-t", "-c", str(conf)], capture_output=True, text=True, env=env, timeout=30)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "auth" / "auth.conf").unlink()  # the include is required: a node without users refuses
    missing = subprocess.run([binary, "-t", "-c", str(conf)], capture_output=True, text=True, env=env)
    assert missing.returncode != 0


def test_cluster_services_point_at_the_tier() -> None:
    """nats setup (the durables before any device), ingest and alerts on their durables with every node
    in their URLs (nats-py and the MQTT client move to the next), devices over MQTT 3.1.1 via every
    gateway; each service as its own NATS user."""
    services = compose()["services"]

    def urls(value: str, scheme: str, user: str, port: int) -> None:
        got = value.split(",")
        assert [u.split("@")[1] for u in got] == [f"{n}:{port}" for n in NODES]
        assert all(u.startswith(f"{scheme}://{user}:") for u in got), value

    setup = services["nats-setup"]
    assert setup["command"] == ["nats", "setup"]
    assert setup["restart"] == "on-failure"  # retried until the nodes answer
    urls(setup["environment"]["MICROFLEET_NATS_URL"], "nats", "nats-admin", 4222)
    urls(setup["environment"]["MICROFLEET_MQTT_URL"], "mqtt", "svc-ingest", 1883)
    assert set(setup["depends_on"]) == set(NODES)
    for name, command, user in (
        ("ingest-cluster", ["ingest"], "svc-ingest"),
        ("alerts-cluster", ["alerts", "run"], "svc-alerts"),
    ):
        svc, env = services[name], services[name]["environment"]
        assert svc["command"] == command
        urls(env["MICROFLEET_NATS_URL"], "nats", user, 4222)
        urls(env["MICROFLEET_MQTT_URL"], "mqtt", user, 1883)
        assert env["MICROFLEET_MQTT_VERSION"] == "3.1.1"
        assert svc["depends_on"]["nats-setup"] == {"condition": "service_completed_successfully"}
        assert svc["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["ingest-cluster"]["environment"]["MICROFLEET_INGEST_GROUP"] == "ingest"
    assert services["alerts-cluster"]["environment"]["MICROFLEET_ALERT_GROUP"] == "alerts"
    for name in ("nats-setup", "ingest-cluster", "alerts-cluster"):  # one feed mode, its durables
        assert services[name]["environment"]["MICROFLEET_ALERT_FEED"] == "committed", name
    sim = services["simulator-cluster"]
    urls(sim["environment"]["MICROFLEET_MQTT_URL"], "mqtt", "svc-simulator", 1883)
    assert sim["environment"]["MICROFLEET_EDGE_MQTT_VERSION"] == "3.1.1"
    assert "--id-prefix" in sim["command"]  # never the single-box simulator's device ids
    assert sim["depends_on"] == {"ingest-cluster": {"condition": "service_healthy"}}
