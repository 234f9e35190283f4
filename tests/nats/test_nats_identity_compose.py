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
from tests.support.nats import nats_server_binary

ROOT = Path(__file__).resolve().parents[2]
NODES = ("nats-1", "nats-2", "nats-3")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_cluster_profile_has_three_nodes_and_their_users() -> None:
    services = compose()["services"]
    cluster = {name for name, svc in services.items() if "cluster" in (svc.get("profiles") or [])}
    assert cluster == {"nats-auth", *NODES}
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
    assert set(NODES) | {"nats-auth", "broker"} <= set(out.stdout.split())


@pytest.mark.skipif(nats_server_binary() is None, reason="nats-server is not installed")
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
