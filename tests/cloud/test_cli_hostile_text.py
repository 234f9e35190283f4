"""Text that devices and people wrote is shown as written: a firmware version or a quarantined payload's
detail such as "[/x]" is not rich markup (it made `devices list` and `quarantine list` crash)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.cloud.test_api_support import migrated_database

HOSTILE = "[/x] [bold]1.0"


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with migrated_database() as d:
        with psycopg.connect(d) as conn:
            conn.execute(
                "INSERT INTO devices (device_id, model, hw_rev, fw_version, tags) VALUES (%s, %s, %s, %s, %s)",
                ("hostile-1", "[red]mf", "[/]", HOSTILE, ["[/tag]"]),
            )
            payload = HOSTILE.encode()
            conn.execute(
                "INSERT INTO quarantine (topic, payload, payload_sha256, reason, detail) "
                "VALUES (%s, %s, %s, %s, %s)",
                ("mf/v1/hostile-1/up/session", payload, hashlib.sha256(payload).digest(), "schema", HOSTILE),
            )
        yield d


@pytest.mark.parametrize("command", [("devices", "list"), ("quarantine", "list")])
def test_stored_text_is_printed_as_written(dsn: str, command: tuple[str, ...]) -> None:
    out = CliRunner().invoke(app, list(command), env={"COLUMNS": "250", "MICROFLEET_DATABASE_URL": dsn})
    assert out.exit_code == 0, out.output
    assert HOSTILE in out.stdout and "hostile-1" in out.stdout
