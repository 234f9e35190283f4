"""Health data over real HTTP (issue 14): a device's contraindication flags and notes are read only with a
token holding the health_data grant (no role implies it, admin included), and every read is audited."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cloud.api.cli import app as api_cli
from cloud.api.models import Role
from cloud.config import CloudConfig
from tests.cloud.test_api_support import ApiServer, migrated_database, mint, mint_all, serve


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with migrated_database() as d:
        yield d


@pytest.fixture(scope="module")
def api(dsn: str) -> Iterator[ApiServer]:
    with serve(CloudConfig(database_url=dsn)) as server:
        yield server


def reads(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "select token_name, device_id, route from health_data_reads order by id"
        ).fetchall()


PREGNANT = {
    "device_id": "dev-h-1",
    "model": "mf-home-1",
    "profile": {"tz": "UTC", "contraindications": {"pregnancy": True}, "notes": "due in May"},
}


def test_only_the_health_grant_reads_contraindications_and_each_read_is_audited(
    api: ApiServer, dsn: str
) -> None:
    keys = mint_all(dsn)
    with api.client(keys[Role.ADMIN]) as admin:
        made = admin.post("/devices", json=PREGNANT)
        assert made.status_code == 201, made.text
        profile = made.json()["profile"]  # the admin wrote it, but reads it back only with the grant
        assert (profile["contraindications"], profile["notes"], profile["health_data_withheld"]) == (
            None,
            None,
            True,
        )
        assert profile["tz"] == "UTC"
        assert admin.get("/devices/dev-h-1/profile").status_code == 403
        put = admin.put("/devices/dev-h-1/profile", json=PREGNANT["profile"])
        assert put.status_code == 200 and put.json()["contraindications"] is None
    for role in Role:
        with api.client(keys[role]) as http:
            r = http.get("/devices/dev-h-1/profile")
            assert r.status_code == 403 and "health_data grant" in r.json()["detail"], role
            got = http.get("/devices/dev-h-1").json()
            assert got["profile"]["contraindications"] is None and "pregnan" not in str(got), role
    assert reads(dsn) == []
    # a clinician's token: viewer plus the grant, minted with the CLI
    minted = CliRunner().invoke(
        api_cli,
        ["token", "create", "--name", "dr-lee", "--role", "viewer", "--health-data", "--database-url", dsn],
    )
    assert minted.exit_code == 0, minted.output
    with api.client(minted.stdout.strip().splitlines()[-1]) as clinician:
        r = clinician.get("/devices/dev-h-1/profile")
        assert r.status_code == 200, r.text
        assert r.json()["contraindications"]["pregnancy"] is True and r.json()["notes"] == "due in May"
        assert clinician.get("/devices/dev-h-1").json()["profile"]["contraindications"]["pregnancy"] is True
        assert clinician.get("/devices/nobody/profile").status_code == 404
        assert clinician.put("/devices/dev-h-1/profile", json={}).status_code == 403  # still a viewer
    listed = CliRunner().invoke(api_cli, ["token", "list", "--database-url", dsn])
    assert "dr-lee\tviewer" in listed.stdout and listed.stdout.rstrip().endswith("active\thealth-data")
    assert "test-admin\tadmin" in listed.stdout and "health-data" not in listed.stdout.splitlines()[0]
    assert reads(dsn) == [
        ("dr-lee", "dev-h-1", "GET /devices/{device_id}/profile"),
        ("dr-lee", "dev-h-1", "GET /devices/{device_id}"),
    ]


def test_admins_grant_it_explicitly_and_the_token_list_shows_it(api: ApiServer, dsn: str) -> None:
    with api.client(mint(dsn, Role.ADMIN, "root")) as admin:
        made = admin.post("/tokens", json={"name": "dpo", "role": "viewer", "health_data": True})
        assert made.status_code == 201 and made.json()["health_data"] is True
        plain = admin.post("/tokens", json={"name": "grafana", "role": "admin"})
        assert plain.json()["health_data"] is False
        listed = {t["name"]: t["health_data"] for t in admin.get("/tokens").json()}
        assert (listed["dpo"], listed["grafana"]) == (True, False)
    with api.client(mint(dsn, Role.ADMIN, "ward-admin", health_data=True)) as both:
        made = both.post("/devices", json={**PREGNANT, "device_id": "dev-h-2"})
        assert made.json()["profile"]["contraindications"]["pregnancy"] is True
    assert reads(dsn)[-1] == ("ward-admin", "dev-h-2", "POST /devices")
