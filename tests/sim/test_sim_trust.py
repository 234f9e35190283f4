"""`microfleet sim` agents trust the signing keys of the scenario file (`trusted_keys`) or of
MICROFLEET_EDGE_TRUSTED_KEYS: a protocol published with `microfleet protocol publish` is applied by the
simulated fleet, through the real CLI (two processes), a real broker, ingest and a scratch database."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import psycopg
import pytest

from cloud.ingest.service import IngestService
from contract.protocol import starter_protocol
from contract.signing import SigningKey
from simulators.scenario import ScenarioError, parse_scenario
from tests.cloud.test_api_support import wait_for
from tests.support.services import ROOT, Mosquitto

DEVICES = 3


def microfleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=os.environ | {"COLUMNS": "160"} | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _scalar(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql.encode()).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("where", ["scenario", "env"])
def test_a_protocol_published_to_a_sim_fleet_is_applied(
    where: str, tmp_path: Path, broker: Mosquitto, database_url: str, ingest: IngestService
) -> None:
    key = SigningKey.generate()
    (tmp_path / "signing.pem").write_bytes(key.to_pem())
    (tmp_path / "keys.json").write_bytes(msgspec.json.encode([key.trusted()]))
    protocol = msgspec.structs.replace(starter_protocol(datetime.now(UTC)), version=3)
    (tmp_path / "protocol.json").write_bytes(msgspec.json.encode(protocol))
    keys_line = 'trusted_keys = "keys.json"\n' if where == "scenario" else ""
    (tmp_path / "fleet.toml").write_text(  # real time: the fleet lives while the protocol is published
        f'name = "trust"\nseed = 2\ndevices = {DEVICES}\ndays = 1\nspeed = 1\nid_prefix = "tr"\n{keys_line}'
        "[personas]\ncompliant_starter = 1\n"
    )
    env = {
        "MICROFLEET_DATABASE_URL": database_url,
        "MICROFLEET_MQTT_URL": broker.url,
        "MICROFLEET_SIGNING_KEY_FILE": str(tmp_path / "signing.pem"),
    }
    env_keys = {"MICROFLEET_EDGE_TRUSTED_KEYS": str(tmp_path / "keys.json")} if where == "env" else {}
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "sim",
            "--scenario",
            str(tmp_path / "fleet.toml"),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        env={k: v for k, v in os.environ.items() if k != "MICROFLEET_EDGE_TRUSTED_KEYS"} | env | env_keys,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        online = "select count(*) from devices where state = 'online'"
        wait_for(lambda: _scalar(database_url, online) == DEVICES, 30, "the sim fleet online")
        published = microfleet(
            env, "protocol", "publish", str(tmp_path / "protocol.json"), "--to-model", "mf-home-1"
        )
        assert published.returncode == 0, published.stdout + published.stderr
        applied = "select count(*) from device_events where event = 'protocol_applied' and value = 3"
        rejected = "select count(*) from device_events where event = 'protocol_rejected'"
        wait_for(
            lambda: _scalar(database_url, applied) + _scalar(database_url, rejected) >= DEVICES,
            30,
            "every agent's answer to the protocol",
        )
        assert _scalar(database_url, rejected) == 0
        assert _scalar(database_url, applied) == DEVICES
        converged = "select count(*) from devices where protocol_id = 'home-starter' and protocol_version = 3"
        wait_for(lambda: _scalar(database_url, converged) == DEVICES, 10, "the fleet's births with v3")
    finally:
        sim.terminate()
        out, _ = sim.communicate(timeout=30)
    assert "agents trust 1 key(s)" in out


def test_scenario_trusted_keys_resolve_next_to_the_file(tmp_path: Path) -> None:
    sc = parse_scenario('trusted_keys = "k/keys.json"', base_dir=tmp_path)
    assert sc.trusted_keys == tmp_path / "k" / "keys.json"
    assert parse_scenario("devices = 2").trusted_keys is None
    with pytest.raises(ScenarioError, match="trusted_keys"):
        parse_scenario("trusted_keys = 3")
