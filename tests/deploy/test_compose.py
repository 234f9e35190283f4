"""docker-compose.yml parses (docker-compose config, no engine needed), names only settings the code
reads, mounts the project's broker config, and the device image cannot pull a database driver."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
# every place the code reads its configuration from the environment
CONFIG_FILES = tuple(
    path
    for package in ("cloud", "edge", "simulators", "cli")
    for path in sorted((ROOT / package).rglob("*.py"))
)


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_config_validates() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip(
            "docker-compose is not installed: apt-get install -y docker-compose (scripts/ensure-services.sh)"
        )
    done = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_every_microfleet_variable_exists_in_the_code_configuration() -> None:
    known = set()
    for path in CONFIG_FILES:
        text = path.read_text()
        known |= set(re.findall(r"MICROFLEET_[A-Z0-9_]+", text))
        # names built from a prefix, as in cloud/alerts/config.py: p = "MICROFLEET_ALERT_"; e.get(p + "GROUP")
        for prefix in re.findall(r'= "(MICROFLEET_[A-Z0-9_]+_)"', text):
            known |= {prefix + name for name in re.findall(r'p \+ "([A-Z0-9_]+)"', text)}
    used = set(re.findall(r"MICROFLEET_[A-Z0-9_]+", COMPOSE.read_text()))
    assert used, "compose should configure the services through MICROFLEET_* variables"
    assert used <= known, f"unknown to the code's configuration: {sorted(used - known)}"


def test_services_start_in_order_with_health_checks() -> None:
    services = compose()["services"]
    for name in ("broker", "timescaledb", "grafana"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    assert services["ingest"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["broker-setup"]["depends_on"]["broker"]["condition"] == "service_healthy"
    for name in ("ingest", "alerts", "simulator"):
        assert services[name]["depends_on"]["broker-setup"]["condition"] == "service_completed_successfully"
    for name, service in services.items():
        assert "container_name" not in service, f"{name}: a fixed container name prevents --scale"
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image ({image})"
    assert re.fullmatch(r"timescale/timescaledb:2\.\d+\.\d+-pg16", services["timescaledb"]["image"])
    assert re.fullmatch(r"grafana/grafana-oss:11\.\d+\.\d+", services["grafana"]["image"])
    assert re.fullmatch(r"eclipse-mosquitto:2\.\d+\.\d+", services["broker"]["image"])


def test_broker_mounts_the_project_configuration() -> None:
    volumes = compose()["services"]["broker"]["volumes"]
    assert "./deploy/mosquitto:/mosquitto/config:ro" in volumes  # base conf, secure overlay, entrypoint
    assert compose()["services"]["broker"]["entrypoint"][-1] == "/mosquitto/config/entrypoint.sh"
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    (location,) = re.findall(r"^persistence_location (\S+)", conf, flags=re.M)
    assert any(v.endswith(":" + location.rstrip("/")) for v in volumes), "persistence needs a volume"


def test_grafana_mounts_provisioning_and_generated_dashboards() -> None:
    grafana = compose()["services"]["grafana"]
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/microfleet.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in grafana["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    datasource = (ROOT / "deploy/grafana/provisioning/datasources/microfleet.yaml").read_text()
    for name in re.findall(r"\$\{(\w+)\}", datasource):
        assert name in grafana["environment"], f"the datasource needs {name} in grafana's environment"


def _closure(extra: str, extras: dict[str, list[str]]) -> list[str]:
    out: list[str] = []
    for req in extras[extra]:
        m = re.fullmatch(r"microfleet\[([\w,]+)\]", req)
        if m:
            for sub in m.group(1).split(","):
                out += _closure(sub, extras)
        else:
            out.append(req)
    return out


def test_device_image_carries_no_database_driver() -> None:
    dockerfile = (ROOT / "deploy/docker/Dockerfile.device").read_text()
    (extra,) = re.findall(r'pip install "\.\[(\w+)\]"', dockerfile)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [*project["dependencies"], *_closure(extra, project["optional-dependencies"])]
    assert not [d for d in deps if re.match(r"(psycopg|asyncpg|sqlalchemy)", d, flags=re.I)], deps
    # and no cloud code: only the packages the agent and the simulator run (scripts/check-extras `device`)
    copied = set(re.findall(r"^COPY (\w+) \./", dockerfile, flags=re.M))
    assert copied == {"requirements", "contract", "edge", "simulators", "cli"}, copied
    for name in ("Dockerfile.cloud", "Dockerfile.device"):
        text = (ROOT / "deploy/docker" / name).read_text()
        assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim", text, flags=re.M), name
        assert text.count("FROM ") == 2, f"{name}: build and runtime stages"


def test_every_compose_command_exists_in_the_cli() -> None:
    """A service may only run a `microfleet` command (and options) that exists."""
    import typer

    from cli.main import app

    # typer >= 0.29 vendors its own click (typer._click): use the classes of the command it builds
    root = typer.main.get_command(app)
    assert hasattr(root, "get_command"), "the root command must be a group"
    context_type = type(typer.main.get_command(app).make_context("microfleet", [], resilient_parsing=True))
    invocations: list[tuple[str, list[str]]] = []
    for name, service in compose()["services"].items():
        if "command" not in service or not str(service.get("image", "")).startswith("microfleet-"):
            continue  # only our images run `microfleet` (the NATS nodes' command is nats-server's)
        if service.get("entrypoint", [None])[0] == "/bin/sh":  # a shell line of `microfleet ...` && ...
            for part in " ".join(service["command"]).split("&&"):
                words = part.split()
                assert words[0] == "microfleet", f"{name}: {part!r} is not a microfleet command"
                invocations.append((name, words[1:]))
        else:
            invocations.append((name, list(service["command"])))
    for name, command_words in invocations:
        words = [w for w in command_words if not w.startswith("${")]
        command = root
        path = []
        while hasattr(command, "get_command") and words and not words[0].startswith("-"):
            path.append(words.pop(0))
            sub = command.get_command(context_type(command), path[-1])
            assert sub is not None, f"{name}: `microfleet {' '.join(path)}` does not exist"
            command = sub
        options = {o for p in command.params for o in getattr(p, "opts", [])}
        for word in words:
            if word.startswith("-"):
                assert word in options, f"{name}: `microfleet {' '.join(path)}` has no option {word}"


def test_health_checks_are_shell_form_and_the_local_profile_keeps_them() -> None:
    """Podman's Docker API splits an exec-form check (["CMD", "python", "-c", "..."]) at spaces, so every
    check is CMD-SHELL (Docker runs it the same); the local profile swaps images and leaves the public-image
    services out, but runs the production file's entrypoints and checks (what `make compose-test` tests)."""
    for name, service in compose()["services"].items():
        if "healthcheck" in service:
            assert service["healthcheck"]["test"][0] == "CMD-SHELL", name
    local = yaml.safe_load((ROOT / "deploy/local/docker-compose.local.yml").read_text())
    for name, service in local["services"].items():
        assert set(service) <= {"image", "profiles"}, f"the local profile overrides {name}: {sorted(service)}"
        if "profiles" in service:
            assert name in ("prometheus", "grafana"), name
