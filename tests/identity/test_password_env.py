"""`--password-env` on both identity CLIs (`microfleet broker service`, `microfleet nats-auth service`): a
named variable that is unset or empty stops the command with exit 2 before anything is created, so a
deployment's service never gets a generated password by mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


@pytest.mark.parametrize("value", [None, ""])
def test_broker_service_refuses_an_unset_password_variable(value: str | None) -> None:
    r = runner.invoke(
        app,
        ["broker", "service", "svc-x", "--role", "svc-ingest", "--password-env", "MF_TEST_PW"],
        env={"MF_TEST_PW": value, "COLUMNS": "200"},
    )
    assert r.exit_code == 2, r.output
    assert "MF_TEST_PW is not set" in r.stderr


@pytest.mark.parametrize("value", [None, ""])
def test_nats_auth_service_refuses_an_unset_password_variable(tmp_path: Path, value: str | None) -> None:
    store = tmp_path / "ids.json"
    args = ["nats-auth", "service", "svc-x", "--role", "svc-ingest", "--password-env", "MF_TEST_PW"]
    r = runner.invoke(app, [*args, "--store", str(store)], env={"MF_TEST_PW": value, "COLUMNS": "200"})
    assert r.exit_code == 2, r.output
    assert "MF_TEST_PW is not set" in r.stderr
    assert not store.exists()  # nothing created


def test_nats_auth_service_takes_the_password_from_the_variable(tmp_path: Path) -> None:
    store = tmp_path / "ids.json"
    args = ["nats-auth", "service", "svc-x", "--role", "svc-ingest", "--password-env", "MF_TEST_PW"]
    r = runner.invoke(app, [*args, "--store", str(store)], env={"MF_TEST_PW": "s3cret-pw", "COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "s3cret-pw" not in r.stdout  # a given password is never echoed
    assert "svc-x" in store.read_text()
