"""Everyday listing commands as an operator meets them: `microfleet --version`, `ota release list`,
`ota rollout list`, `ota status --json/--watch`, `db status` row counts, and `--json` everywhere (one JSON
document on stdout, nothing else), through the real root CLI against a migrated scratch database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import msgspec
import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from cloud.api.models import Role
from cloud.config import CloudConfig
from cloud.db.status import collect
from contract.signing import SigningKey
from tests.cloud.test_api_support import migrated_database, mint_all, serve


def run(*args: str) -> str:
    out = CliRunner().invoke(app, list(args))
    assert out.exit_code == 0, f"{args}: {out.output}"
    return out.stdout


def run_json(*args: str) -> object:
    """The command's stdout must be exactly one JSON document."""
    return json.loads(run(*args))


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with migrated_database() as d:
        with psycopg.connect(d) as conn:
            conn.execute(
                "INSERT INTO devices (device_id, model, hw_rev, fw_version) "
                "SELECT 'lst-' || i, 'mf-home-1', 'A', '1.0.0' FROM generate_series(1, 6) i"
            )
        yield d


@pytest.fixture
def env(dsn: str, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> str:
    keys = tmp_path_factory.getbasetemp() / "lst-keys"
    if not keys.exists():
        keys.mkdir()
        key = SigningKey.generate()
        (keys / "signing.pem").write_bytes(key.to_pem())
        (keys / "trusted.json").write_bytes(msgspec.json.encode([key.trusted()]))
    monkeypatch.setenv("MICROFLEET_DATABASE_URL", dsn)
    monkeypatch.setenv("MICROFLEET_SIGNING_KEY_FILE", str(keys / "signing.pem"))
    monkeypatch.setenv("MICROFLEET_OTA_TRUSTED_KEYS", str(keys / "trusted.json"))
    monkeypatch.setenv("MICROFLEET_ARTIFACT_DIR", str(keys / "store"))
    return dsn


@pytest.fixture
def rollout(env: str, tmp_path: Path) -> int:
    """A release 1.1.0 and a running rollout of it to the six devices (made once per module)."""
    with psycopg.connect(env) as conn:
        row = conn.execute("SELECT min(rollout_id) FROM ota_rollouts").fetchone()
    if row is not None and row[0] is not None:
        return int(row[0])
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(bytes(range(256)) * 64)
    run("ota", "release", "add", str(firmware), "--version", "1.1.0", "--code", "2", "--models", "mf-home-1")
    run("ota", "rollout", "create", "1.1.0", "--waves", "50,100", "--soak", "0", "--min-sample", "1")
    with psycopg.connect(env) as conn:
        row = conn.execute("SELECT max(rollout_id) FROM ota_rollouts").fetchone()
    assert row is not None
    return int(row[0])


def test_version_comes_from_the_package_metadata() -> None:
    assert run("--version").strip() == f"microfleet {version('microfleet')}"


def test_release_list_human_and_json(env: str, rollout: int) -> None:
    assert "1.1.0" in run("ota", "release", "list")
    listed = run_json("ota", "release", "list", "--json")
    assert isinstance(listed, list) and len(listed) == 1
    release = listed[0]
    assert release["version"] == "1.1.0" and release["version_code"] == 2 and release["release_id"] >= 1


def test_rollout_list_human_and_json(env: str, rollout: int) -> None:
    text = run("ota", "rollout", "list")
    assert str(rollout) in text and "1.1.0" in text and "running" in text
    listed = run_json("ota", "rollout", "list", "--json")
    assert isinstance(listed, list)
    (r,) = [x for x in listed if x["rollout_id"] == rollout]
    assert (r["version"], r["status"], r["devices"]) == ("1.1.0", "running", 6)
    assert run_json("ota", "rollout", "list", "--status", "completed", "--json") == []


def test_status_json_is_one_document(env: str, rollout: int) -> None:
    view = run_json("ota", "status", str(rollout), "--json")
    assert isinstance(view, dict)
    assert view["rollout_id"] == rollout and view["status"] == "running" and view["done"] is False
    assert sum(w["size"] for w in view["waves"]) == 6


def test_status_watch_refreshes_until_the_rollout_ends(env: str, rollout: int) -> None:
    """--watch --json prints one line per refresh (a real `microfleet` process) and returns by itself when
    the rollout ends."""
    exe = Path(sys.executable).with_name("microfleet")
    cmd = [str(exe), "ota", "status", str(rollout), "--watch", "--json", "--interval", "0.1"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ)) as proc:
        assert proc.stdout is not None
        try:
            first = json.loads(proc.stdout.readline())
            second = json.loads(proc.stdout.readline())  # refreshed, not printed once
            assert first["status"] == second["status"] == "running" and first["done"] is False
            with psycopg.connect(env, autocommit=True) as conn:
                conn.execute("UPDATE ota_rollouts SET status = 'cancelled' WHERE rollout_id = %s", (rollout,))
            rest = [json.loads(line) for line in proc.stdout]
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            with psycopg.connect(env, autocommit=True) as conn:
                conn.execute("UPDATE ota_rollouts SET status = 'running' WHERE rollout_id = %s", (rollout,))
    assert rest and rest[-1]["status"] == "cancelled" and rest[-1]["done"] is True


def test_db_status_counts_rows_of_a_fresh_database(env: str) -> None:
    """Never-analysed tables used to show '?': small tables are counted exactly, labelled so."""
    text = run("db", "status")
    assert "?" not in text
    assert "devices" in text
    st = run_json("db", "status", "--json")
    assert isinstance(st, dict)
    rows = {r["relation"]: r for r in st["relations"]}
    assert rows["devices"]["rows"] == 6 and rows["devices"]["exact"] is True
    assert st["path"] in ("plain", "timescale") and st["migrations"]


@pytest.mark.parametrize(
    "args",
    [
        ("alerts", "list", "--json"),
        ("api", "token", "list", "--json"),
        ("devices", "list", "--json"),
        ("protocol", "list", "--json"),
        ("quarantine", "list", "--json"),
    ],
)
def test_lists_print_one_json_array(env: str, args: tuple[str, ...]) -> None:
    assert isinstance(run_json(*args), list)


def test_alerts_params_and_protocol_show_are_one_document(env: str) -> None:
    params = run_json("alerts", "params", "lst-1", "--json")
    assert isinstance(params, dict) and params["device_id"] == "lst-1"


def test_api_lists_rollouts_and_releases(env: str, rollout: int) -> None:
    tokens = mint_all(env)
    with serve(CloudConfig(database_url=env)) as api, api.client(tokens[Role.VIEWER]) as viewer:
        listed = viewer.get("/ota/rollouts")
        assert listed.status_code == 200, listed.text
        (r,) = [x for x in listed.json() if x["rollout_id"] == rollout]
        assert (r["version"], r["status"], r["devices"], r["pending"]) == ("1.1.0", "running", 6, 6)
        assert viewer.get("/ota/rollouts", params={"status": "completed"}).json() == []
        assert viewer.get("/ota/rollouts", params={"status": "exploded"}).status_code == 422
        assert [x["version"] for x in viewer.get("/ota/releases").json()] == ["1.1.0"]
        assert api.client().get("/ota/rollouts").status_code == 401


def test_db_status_estimates_big_tables_only_when_the_planner_knows(env: str) -> None:
    """Above the size bound an analysed table gets the planner's estimate (labelled); one never analysed
    is counted rather than shown as unknown."""
    with psycopg.connect(env, autocommit=True) as conn:
        conn.execute("ANALYZE devices")
        rows = {r.relation: r for r in collect(conn, exact_below=0).relations}
        assert (rows["devices"].rows, rows["devices"].exact) == (6, False)  # ANALYZE saw every row
        assert rows["usage_fleet_daily"].exact is True and rows["usage_fleet_daily"].rows == 0
        assert all(r.exact for r in collect(conn, exact=True, exact_below=0).relations)


def test_status_watch_live_view_ends_with_an_ended_rollout(env: str, rollout: int) -> None:
    with psycopg.connect(env, autocommit=True) as conn:
        conn.execute("UPDATE ota_rollouts SET status = 'completed' WHERE rollout_id = %s", (rollout,))
        try:
            out = run("ota", "status", str(rollout), "--watch", "--interval", "0.05")
        finally:
            conn.execute("UPDATE ota_rollouts SET status = 'running' WHERE rollout_id = %s", (rollout,))
    assert f"rollout {rollout}: completed" in out and "pending" in out
