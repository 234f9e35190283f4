"""Authentication and roles over real HTTP: 401 without or with a bad token, 403 for a role too low."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from typer.testing import CliRunner

from cloud.api import tokens
from cloud.api.cli import app as api_cli
from cloud.api.models import Role
from cloud.config import CloudConfig
from tests.cloud.test_api_support import ApiServer, migrated_database, mint_all, serve


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with migrated_database() as d:
        yield d


@pytest.fixture(scope="module")
def api(dsn: str) -> Iterator[ApiServer]:
    with serve(CloudConfig(database_url=dsn)) as server:
        yield server


@pytest.fixture(scope="module")
def keys(dsn: str) -> dict[Role, str]:
    return mint_all(dsn)


def test_no_token_is_401_with_advice(api: ApiServer) -> None:
    with api.client() as http:
        r = http.get("/devices")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in r.json()["detail"]


@pytest.mark.parametrize("header", ["Bearer mft_not-a-token", "Basic dXNlcjpwdw==", "Bearer"])
def test_bad_token_is_401(api: ApiServer, header: str) -> None:
    with api.client() as http:
        r = http.get("/devices", headers={"Authorization": header})
    assert r.status_code == 401


def test_roles_are_ordered(api: ApiServer, keys: dict[Role, str]) -> None:
    expected = {  # (GET /devices: viewer, POST /tokens: admin)
        Role.VIEWER: (200, 403),
        Role.OPERATOR: (200, 403),
        Role.ADMIN: (200, 201),
    }
    for role, (read, manage) in expected.items():
        with api.client(keys[role]) as http:
            assert http.get("/devices").status_code == read, role
            r = http.post("/tokens", json={"name": f"made-by-{role}", "role": "viewer"})
            assert r.status_code == manage, (role, r.text)
            if manage == 403:
                assert "needs the admin role" in r.json()["detail"]


def test_register_needs_admin(api: ApiServer, keys: dict[Role, str]) -> None:
    body = {"device_id": "auth-dev-1", "model": "mini"}
    with api.client(keys[Role.OPERATOR]) as http:
        assert http.post("/devices", json=body).status_code == 403
        assert http.get("/devices/auth-dev-1").status_code == 404  # nothing was written
    with api.client(keys[Role.ADMIN]) as http:
        assert http.post("/devices", json=body).status_code == 201


def test_token_lifecycle_over_http(api: ApiServer, keys: dict[Role, str], dsn: str) -> None:
    with api.client(keys[Role.ADMIN]) as admin:
        made = admin.post("/tokens", json={"name": "grafana", "role": "viewer"})
        assert made.status_code == 201
        new = made.json()
        assert new["token"].startswith(tokens.PREFIX) and new["role"] == "viewer"
        listed = admin.get("/tokens").json()
        assert any(t["id"] == new["id"] and "token" not in t for t in listed)
        with api.client(new["token"]) as viewer:
            assert viewer.get("/devices").status_code == 200
            revoked = admin.delete(f"/tokens/{new['id']}")
            assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
            assert viewer.get("/devices").status_code == 401
        assert admin.delete("/tokens/999999").status_code == 404
    # only the digest is stored
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("select token_sha256 from api_tokens where id = %s", (new["id"],)).fetchone()
    assert stored is not None and bytes(stored[0]) == tokens.digest(new["token"])


def test_cli_mints_the_first_admin_token(api: ApiServer, dsn: str) -> None:
    result = CliRunner().invoke(
        api_cli, ["token", "create", "--name", "first-admin", "--role", "admin", "--database-url", dsn]
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith(tokens.PREFIX)
    with api.client(token) as http:
        r = http.post("/tokens", json={"name": "second", "role": "operator"})
    assert r.status_code == 201
    listing = CliRunner().invoke(api_cli, ["token", "list", "--database-url", dsn])
    assert "first-admin\tadmin" in listing.stdout


def test_cli_explains_a_database_without_schema(database_url: str) -> None:
    result = CliRunner().invoke(
        api_cli, ["token", "create", "--name", "x", "--role", "viewer", "--database-url", database_url]
    )
    assert result.exit_code == 1
    assert "microfleet db migrate" in result.stderr
