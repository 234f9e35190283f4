"""Devices over real HTTP: registration, profile and contraindication flags, state, list filters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import psycopg
import pytest

from cloud.api.models import Role
from cloud.config import CloudConfig
from tests.cloud.test_api_support import (
    ApiServer,
    execute,
    fixed_clock,
    migrated_database,
    mint,
    mint_all,
    serve,
)

NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)  # summer: Europe/Paris is UTC+2


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with migrated_database() as d:
        yield d


@pytest.fixture(scope="module")
def api(dsn: str) -> Iterator[ApiServer]:
    with serve(CloudConfig(database_url=dsn), clock=fixed_clock(NOW)) as server:
        yield server


@pytest.fixture(scope="module")
def keys(dsn: str) -> dict[Role, str]:
    return mint_all(dsn)


@pytest.fixture
def admin(api: ApiServer, keys: dict[Role, str]) -> Iterator[httpx.Client]:
    with api.client(keys[Role.ADMIN]) as http:
        yield http


def test_register_then_read_back(admin: httpx.Client, api: ApiServer, dsn: str) -> None:
    body = {
        "device_id": "dev-reg-1",
        "model": "trinity",
        "hw_rev": "B2",
        "profile": {
            "tz": "Europe/Paris",
            "contraindications": {"pregnancy": True, "neck_contraindication": True},
            "notes": "declared at purchase",
        },
    }
    r = admin.post("/devices", json=body)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/devices/dev-reg-1"
    assert admin.get("/devices/dev-reg-1").json() == r.json()
    assert r.json()["profile"]["contraindications"] is None  # health data: only with the grant
    with api.client(mint(dsn, Role.VIEWER, "test-clinician", health_data=True)) as clinician:
        got = clinician.get("/devices/dev-reg-1").json()
    assert (got["model"], got["hw_rev"], got["registered"]) == ("trinity", "B2", True)
    assert got["tz_offset_min"] == 120  # derived from the zone at the (injected) current time
    profile = got["profile"]
    assert profile["tz"] == "Europe/Paris" and profile["updated_by"] == "test-admin"
    assert profile["contraindications"]["pregnancy"] is True
    assert profile["contraindications"]["epilepsy"] is False
    with psycopg.connect(dsn) as conn:  # stored in the documented tables
        row = conn.execute(
            "select p.pregnancy, p.neck_contraindication, d.model from device_profiles p "
            "join devices d using (device_id) where device_id = 'dev-reg-1'"
        ).fetchone()
    assert row == (True, True, "trinity")


def test_register_twice_is_a_conflict(admin: httpx.Client) -> None:
    body = {"device_id": "dev-reg-2", "model": "mini"}
    assert admin.post("/devices", json=body).status_code == 201
    again = admin.post("/devices", json={**body, "model": "other"})
    assert again.status_code == 409
    assert "PUT" in again.json()["detail"]
    assert admin.get("/devices/dev-reg-2").json()["model"] == "mini"


def test_registration_completes_a_device_seen_by_ingest(admin: httpx.Client, dsn: str) -> None:
    execute(
        dsn,
        "insert into devices (device_id, state, fw_version, tz_offset_min, last_seen) values (%s, %s, %s, %s, %s)",
        [("dev-seen-1", "online", "1.4.0", -300, NOW)],
    )
    assert admin.get("/devices/dev-seen-1").json()["registered"] is False
    r = admin.post(
        "/devices", json={"device_id": "dev-seen-1", "model": "mini", "profile": {"tz_offset_min": 60}}
    )
    assert r.status_code == 201
    got = r.json()
    assert (got["state"], got["fw_version"], got["model"], got["registered"]) == (
        "online",
        "1.4.0",
        "mini",
        True,
    )
    assert got["tz_offset_min"] == -300  # what the device reports wins over the registration


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"device_id": "bad/id", "model": "m"}, "device_id"),
        ({"device_id": "dev-x", "model": "m", "profile": {"tz": "Mars/Olympus"}}, "tz"),
        ({"device_id": "dev-x", "model": "m", "profile": {"tz_offset_min": 5000}}, "tz_offset_min"),
        ({"device_id": "dev-x", "model": "m", "profile": {"contraindications": {"smoker": True}}}, "smoker"),
        ({"device_id": "dev-x"}, "model"),
    ],
)
def test_bad_registration_is_422_naming_the_field(
    admin: httpx.Client, body: dict[str, object], field: str
) -> None:
    r = admin.post("/devices", json=body)
    assert r.status_code == 422
    assert any(field in [str(p) for p in e["loc"]] for e in r.json()["detail"]), r.text
    assert admin.get("/devices/dev-x").status_code == 404


def test_profile_replace(admin: httpx.Client, api: ApiServer, keys: dict[Role, str], dsn: str) -> None:
    admin.post("/devices", json={"device_id": "dev-prof-1", "model": "mini"})
    new = {"tz": "America/New_York", "contraindications": {"epilepsy": True, "birth_date": "2010-05-01"}}
    r = admin.put("/devices/dev-prof-1/profile", json=new)
    assert r.status_code == 200, r.text
    assert r.json()["tz_offset_min"] == -240
    with api.client(keys[Role.VIEWER]) as viewer:
        assert viewer.get("/devices/dev-prof-1/profile").status_code == 403  # health data needs the grant
        assert viewer.put("/devices/dev-prof-1/profile", json=new).status_code == 403
    with api.client(mint(dsn, Role.VIEWER, "test-clinician", health_data=True)) as clinician:
        got = clinician.get("/devices/dev-prof-1/profile").json()
        assert clinician.get("/devices/nobody/profile").status_code == 404
    assert got["contraindications"]["epilepsy"] is True
    assert got["contraindications"]["birth_date"] == "2010-05-01"
    assert got["contraindications"]["pregnancy"] is False
    assert admin.put("/devices/nobody/profile", json=new).status_code == 404


def test_list_filters_and_pages(admin: httpx.Client, dsn: str) -> None:
    rows = [
        (
            f"flt-{i:02d}",
            "pro" if i % 2 else "mini",
            "2.0.0" if i < 6 else "1.9.0",
            "online" if i % 3 else "offline",
        )
        for i in range(10)
    ]
    execute(dsn, "insert into devices (device_id, model, fw_version, state) values (%s, %s, %s, %s)", rows)

    def ids(r: httpx.Response) -> list[str]:
        return [d["device_id"] for d in r.json()["items"]]

    r = admin.get("/devices", params={"model": "pro", "fw_version": "2.0.0"})
    assert ids(r) == ["flt-01", "flt-03", "flt-05"]
    r = admin.get("/devices", params={"model": "pro", "state": "offline"})
    assert ids(r) == ["flt-03", "flt-09"]
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, str | int] = {"model": "mini", "limit": 2}
        if after:
            params["after"] = after
        page = admin.get("/devices", params=params).json()
        seen += [d["device_id"] for d in page["items"]]
        after = page["next_after"]
        if after is None:
            break
    assert [s for s in seen if s.startswith("flt-")] == [f"flt-{i:02d}" for i in range(0, 10, 2)]
    assert admin.get("/devices", params={"state": "asleep"}).status_code == 422
