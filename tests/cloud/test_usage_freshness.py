"""Usage figures say how fresh they are: the usage API's `fresh_as_of` is the time before which every
stored sample is in the rollups (plain path: the oldest hour still waiting for `db maintain`, or now),
and `db status` shows it too; a real scratch database, the real API and the real CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from cloud.api.models import Role
from cloud.config import CloudConfig
from tests.cloud.test_api_support import ApiServer, migrated_database, mint_all, serve


@pytest.fixture
def dsn() -> Iterator[str]:
    with migrated_database() as d:
        yield d


@pytest.fixture
def api(dsn: str) -> Iterator[ApiServer]:
    with serve(CloudConfig(database_url=dsn)) as server:
        yield server


def test_usage_says_how_fresh_it_is(api: ApiServer, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    with psycopg.connect(dsn) as conn:
        conn.execute("insert into devices (device_id, model) values ('fr-1', 'mf-home-1')")
        conn.execute(
            "insert into samples (device_id, ts, session_id, current_ua, contact, level) "
            "select 'fr-1', %s + i * interval '1 second', 's1', 200, true, 3 from generate_series(0, 59) i",
            (hour,),
        )
    token = mint_all(dsn)[Role.VIEWER]
    with api.client(token) as v:
        before = v.get("/usage/fleet", params={"grain": "hour"}).json()
        assert before["buckets"] == []  # not rolled up yet ...
        assert datetime.fromisoformat(before["fresh_as_of"]) == hour  # ... and the answer says so
        device = v.get("/devices/fr-1/usage", params={"grain": "day"}).json()
        assert datetime.fromisoformat(device["fresh_as_of"]) == hour.replace(hour=0)

        monkeypatch.setenv("MICROFLEET_DATABASE_URL", dsn)
        done = CliRunner().invoke(app, ["db", "maintain"])
        assert done.exit_code == 0, done.output
        asked = datetime.now(UTC)
        after = v.get("/usage/fleet", params={"grain": "hour"}).json()
        assert [b["samples"] for b in after["buckets"]] == [60]
        assert datetime.fromisoformat(after["fresh_as_of"]) >= asked - timedelta(seconds=5)

    status = json.loads(CliRunner().invoke(app, ["db", "status", "--json"]).stdout)
    assert datetime.fromisoformat(status["usage_fresh_as_of"]) >= asked - timedelta(seconds=5)
