"""The operator's side of OTA for real: `microfleet ota ...` and the /ota and /artifacts routes against
a migrated database, a signing key on disk and the artifact store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import psycopg
import pytest
from typer.testing import CliRunner

from cloud.api.tokens import Role
from cloud.config import CloudConfig
from cloud.ota.cli import app as ota_cli
from contract.signing import SigningKey
from tests.cloud.test_api_support import migrated_database, mint_all, serve


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with migrated_database() as dsn:
        key = SigningKey.generate()
        (tmp_path / "signing.pem").write_bytes(key.to_pem())
        (tmp_path / "trusted.json").write_bytes(msgspec.json.encode([key.trusted()]))
        monkeypatch.setenv("MICROFLEET_DATABASE_URL", dsn)
        monkeypatch.setenv("MICROFLEET_SIGNING_KEY_FILE", str(tmp_path / "signing.pem"))
        monkeypatch.setenv("MICROFLEET_OTA_TRUSTED_KEYS", str(tmp_path / "trusted.json"))
        monkeypatch.setenv("MICROFLEET_ARTIFACT_DIR", str(tmp_path / "store"))
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "INSERT INTO devices (device_id, model, hw_rev, fw_version) "
                "SELECT 'ota-cli-' || i, 'mf-home-1', 'A', '1.0.0' FROM generate_series(1, 10) i"
            )
        yield dsn


def cli(*args: str) -> str:
    out = CliRunner().invoke(ota_cli, list(args))
    assert out.exit_code == 0, out.output
    return out.output


def test_release_rollout_and_operator_actions(tmp_path: Path, env: str) -> None:
    firmware = tmp_path / "fw-1.1.0.bin"
    firmware.write_bytes(bytes(range(256)) * 100)
    cli("release", "add", str(firmware), "--version", "1.1.0", "--code", "2", "--models", "mf-home-1")
    # a release whose anti-rollback number is below the newest is refused, with the reason
    older = CliRunner().invoke(
        ota_cli,
        ["release", "add", str(firmware), "--version", "1.0.5", "--code", "1", "--models", "mf-home-1"],
    )
    assert older.exit_code != 0 and "code" in older.output.lower()
    # a file that does not match the given hash is refused before anything is stored
    wrong = CliRunner().invoke(
        ota_cli,
        [
            "release",
            "add",
            str(firmware),
            "--version",
            "1.2.0",
            "--code",
            "3",
            "--models",
            "mf-home-1",
            "--sha256",
            "0" * 64,
        ],
    )
    assert wrong.exit_code != 0

    cli("rollout", "create", "1.1.0", "--waves", "50,100", "--soak", "0", "--min-sample", "2")
    status = cli("status", "1")
    assert "wave 0 (5): pending 5" in status and "wave 1 (5): pending 5" in status  # 10 devices, 50/100 %
    cli("pause", "1")
    with psycopg.connect(env) as conn:
        assert conn.execute("SELECT status FROM ota_rollouts WHERE rollout_id = 1").fetchone() == ("paused",)
    cli("resume", "1")
    cli("cancel", "1")
    with psycopg.connect(env) as conn:
        (state,) = conn.execute("SELECT status FROM ota_rollouts WHERE rollout_id = 1").fetchone()  # type: ignore[misc]
    assert state in ("cancelling", "cancelled")

    tokens = mint_all(env)
    with serve(CloudConfig(database_url=env)) as api:
        viewer, operator = api.client(tokens[Role.VIEWER]), api.client(tokens[Role.OPERATOR])
        releases = viewer.get("/ota/releases").json()
        assert [r["version"] for r in releases] == ["1.1.0"]
        progress = viewer.get("/ota/rollouts/1")
        assert progress.status_code == 200 and sum(w["size"] for w in progress.json()["waves"]) == 10
        assert viewer.post("/ota/rollouts/1/pause").status_code == 403
        assert viewer.get("/ota/rollouts/999").status_code == 404
        assert operator.post("/ota/rollouts/1/explode").status_code == 422  # documented actions only
        # the artifact server resumes a cut download with a Range request
        name = releases[0]["artifact"]
        whole = api.client().get(f"/artifacts/{name}")
        assert whole.status_code == 200 and whole.content == firmware.read_bytes()
        part = api.client().get(f"/artifacts/{name}", headers={"Range": "bytes=1000-"})
        assert part.status_code == 206 and part.content == firmware.read_bytes()[1000:]
        assert api.client().get("/artifacts/../../etc/passwd").status_code == 404
