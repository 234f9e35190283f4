"""Fleet groups for real: tags set and removed through the API and `microfleet devices tag`, stored in
devices.tags (the one column rollouts and protocol pushes target), and the device list filtered by tag,
model, firmware, protocol, last seen and battery in `GET /devices` and `microfleet devices list`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from cloud.api.models import Role
from cloud.config import CloudConfig
from tests.cloud.test_api_support import ApiServer, migrated_database, mint_all, serve

NOW = datetime.now(UTC)
DEVICES = [  # id, model, fw, protocol, protocol version, last seen (hours ago), battery
    ("tg-1", "mf-home-1", "1.0.0", "home-starter", 1, 1, 80.0),
    ("tg-2", "mf-home-1", "1.1.0", "home-starter", 2, 30, 15.0),
    ("tg-3", "mf-pro-1", "2.0.0", "clinic", 1, 2, 50.0),
    ("tg-4", "mf-pro-1", "2.0.0", None, None, None, None),
]


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with migrated_database() as d:
        with psycopg.connect(d) as conn:
            for dev, model, fw, proto, pv, hours, battery in DEVICES:
                conn.execute(
                    "insert into devices (device_id, model, fw_version, protocol_id, protocol_version, "
                    "last_seen, battery_pct) values (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        dev,
                        model,
                        fw,
                        proto,
                        pv,
                        None if hours is None else NOW - timedelta(hours=hours),
                        battery,
                    ),
                )
        yield d


@pytest.fixture(scope="module")
def api(dsn: str) -> Iterator[ApiServer]:
    with serve(CloudConfig(database_url=dsn)) as server:
        yield server


@pytest.fixture(scope="module")
def keys(dsn: str) -> dict[Role, str]:
    return mint_all(dsn)


def ids(page: httpx.Response) -> list[str]:
    assert page.status_code == 200, page.text
    return [d["device_id"] for d in page.json()["items"]]


def stored_tags(dsn: str, device: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select tags from devices where device_id = %s", (device,)).fetchone()
    assert row is not None
    return list(row[0])


def test_put_and_delete_tags_through_the_api(api: ApiServer, keys: dict[Role, str], dsn: str) -> None:
    with api.client(keys[Role.OPERATOR]) as op, api.client(keys[Role.VIEWER]) as viewer:
        assert op.put("/devices/tg-1/tags/eu-west").json() == {"device_id": "tg-1", "tags": ["eu-west"]}
        assert op.put("/devices/tg-1/tags/beta").json()["tags"] == ["beta", "eu-west"]
        assert op.put("/devices/tg-1/tags/beta").json()["tags"] == ["beta", "eu-west"]  # idempotent
        assert stored_tags(dsn, "tg-1") == ["beta", "eu-west"]  # the column rollouts target
        assert viewer.get("/devices/tg-1/tags").json()["tags"] == ["beta", "eu-west"]
        assert viewer.get("/devices/tg-1").json()["tags"] == ["beta", "eu-west"]
        assert op.delete("/devices/tg-1/tags/beta").json()["tags"] == ["eu-west"]
        assert op.delete("/devices/tg-1/tags/beta").status_code == 200  # already gone: still fine
        assert viewer.put("/devices/tg-1/tags/x").status_code == 403
        assert op.put("/devices/nobody/tags/x").status_code == 404
        assert op.put("/devices/tg-1/tags/bad%20tag").status_code == 422
        assert {"tag": "eu-west", "devices": 1} in viewer.get("/tags").json()


def test_cli_tags_devices(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROFLEET_DATABASE_URL", dsn)
    out = CliRunner().invoke(app, ["devices", "tag", "tg-3", "--add", "clinic-paris", "--add", "beta"])
    assert out.exit_code == 0, out.output
    assert stored_tags(dsn, "tg-3") == ["beta", "clinic-paris"]
    out = CliRunner().invoke(app, ["devices", "tag", "tg-3", "--remove", "beta", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == {"device_id": "tg-3", "tags": ["clinic-paris"]}
    missing = CliRunner().invoke(app, ["devices", "tag", "nobody", "--add", "x"])
    assert missing.exit_code == 1 and "no device" in missing.output


def test_list_filters_in_the_api(api: ApiServer, keys: dict[Role, str], dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("update devices set tags = '{fleet-a}' where device_id in ('tg-2', 'tg-4')")
    with api.client(keys[Role.VIEWER]) as v:
        assert ids(v.get("/devices", params={"tag": "fleet-a"})) == ["tg-2", "tg-4"]
        assert ids(v.get("/devices", params={"model": "mf-pro-1"})) == ["tg-3", "tg-4"]
        assert ids(v.get("/devices", params={"fw_version": "2.0.0", "tag": "fleet-a"})) == ["tg-4"]
        assert ids(v.get("/devices", params={"protocol_id": "home-starter"})) == ["tg-1", "tg-2"]
        assert ids(v.get("/devices", params={"protocol_id": "home-starter", "protocol_version": 2})) == [
            "tg-2"
        ]
        since = (NOW - timedelta(hours=5)).isoformat()
        assert ids(v.get("/devices", params={"seen_since": since})) == ["tg-1", "tg-3"]
        assert ids(v.get("/devices", params={"seen_before": since})) == ["tg-2"]
        assert ids(v.get("/devices", params={"battery_below": 20})) == ["tg-2"]
        assert v.get("/devices", params={"battery_below": 101}).status_code == 422
        assert v.get("/devices", params={"tag": "bad tag"}).status_code == 422
        assert v.get("/devices", params={"seen_since": "2026-01-01T00:00:00"}).status_code == 422  # naive


def test_list_filters_in_the_cli(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROFLEET_DATABASE_URL", dsn)

    def listed(*args: str) -> list[str]:
        out = CliRunner().invoke(app, ["devices", "list", "--json", *args])
        assert out.exit_code == 0, out.output
        return [d["device_id"] for d in json.loads(out.stdout)]

    assert listed() == ["tg-1", "tg-2", "tg-3", "tg-4"]
    assert listed("--model", "mf-home-1", "--battery-below", "50") == ["tg-2"]
    assert listed("--seen-since", "5h") == ["tg-1", "tg-3"]
    assert listed("--seen-before", "5h") == ["tg-2"]
    assert listed("--protocol", "clinic") == ["tg-3"]
    table = CliRunner().invoke(app, ["devices", "list", "--fw", "2.0.0"])
    assert table.exit_code == 0 and "tg-3" in table.stdout and "tg-1" not in table.stdout
