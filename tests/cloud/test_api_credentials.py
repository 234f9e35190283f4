"""Device credentials over real HTTP against a mosquitto with dynamic security (the production overlay)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from cloud.api.models import Role
from cloud.config import CloudConfig
from contract.mqtturl import parse_mqtt_url
from tests.cloud.test_api_support import (
    ApiServer,
    migrated_database,
    mint_all,
    secured_broker,
    serve,
    serve_with_broker,
)
from tests.identity.test_broker_acl import Peer
from tests.support.services import Mosquitto

ADMIN_PW = "api-admin-secret"


@pytest.fixture(scope="module")
def sbroker() -> Iterator[Mosquitto]:
    with secured_broker(ADMIN_PW) as broker:
        yield broker


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with migrated_database() as d:
        yield d


@pytest.fixture(scope="module")
def keys(dsn: str) -> dict[Role, str]:
    return mint_all(dsn)


@pytest.fixture(scope="module")
def api(dsn: str, sbroker: Mosquitto) -> Iterator[ApiServer]:
    with serve_with_broker(dsn, sbroker, ADMIN_PW) as server:
        yield server


@pytest.fixture
def admin(api: ApiServer, keys: dict[Role, str]) -> Iterator[httpx.Client]:
    with api.client(keys[Role.ADMIN]) as http:
        yield http


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


def test_provision_then_revoke(admin: httpx.Client, sbroker: Mosquitto, peers: list[Peer]) -> None:
    assert admin.post("/devices", json={"device_id": "cred-1", "model": "mini"}).status_code == 201
    r = admin.post("/devices/cred-1/credentials")
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    creds = r.json()
    assert creds["username"] == "cred-1" and len(creds["password"]) >= 24
    url = parse_mqtt_url(creds["mqtt_url"])
    assert (url.username, url.password, url.port) == ("cred-1", creds["password"], sbroker.port)

    device = Peer(url.port, url.username, url.password, "cred-1")
    peers.append(device)
    assert not device.wait_connack().is_failure
    assert not device.publish("mf/v1/cred-1/up/status", b"{}").is_failure
    assert device.publish("mf/v1/cred-2/up/status", b"{}").value == 135  # only for itself

    again = admin.post("/devices/cred-1/credentials")  # never a second secret silently
    assert again.status_code == 409 and "DELETE" in again.json()["detail"]

    assert admin.delete("/devices/cred-1/credentials").status_code == 204
    assert device.disconnected.wait(5), "a revoked device is disconnected at once"
    retry = Peer(url.port, url.username, url.password, "cred-1-retry")
    peers.append(retry)
    assert retry.wait_connack().is_failure

    assert admin.delete("/devices/cred-1/credentials").status_code == 404
    assert admin.post("/devices/cred-1/credentials").status_code == 201  # rotation: delete, then issue


def test_unknown_device_gets_no_credentials(admin: httpx.Client) -> None:
    r = admin.post("/devices/never-registered/credentials")
    assert r.status_code == 404 and "register" in r.json()["detail"]


def test_credentials_need_admin(api: ApiServer, keys: dict[Role, str], admin: httpx.Client) -> None:
    admin.post("/devices", json={"device_id": "cred-3", "model": "mini"})
    with api.client(keys[Role.OPERATOR]) as operator:
        assert operator.post("/devices/cred-3/credentials").status_code == 403
        assert operator.delete("/devices/cred-3/credentials").status_code == 403


def test_unconfigured_or_unreachable_broker_is_503(dsn: str, keys: dict[Role, str]) -> None:
    no_password = CloudConfig(database_url=dsn, broker_admin_url="mqtt://admin@127.0.0.1:1")
    with serve(no_password) as api, api.client(keys[Role.ADMIN]) as http:
        http.post("/devices", json={"device_id": "cred-4", "model": "mini"})
        r = http.post("/devices/cred-4/credentials")
        assert r.status_code == 503 and "MICROFLEET_BROKER_ADMIN_URL" in r.json()["detail"]
    unreachable = CloudConfig(database_url=dsn, broker_admin_url="mqtt://admin:pw@127.0.0.1:1")
    with serve(unreachable) as api, api.client(keys[Role.ADMIN]) as http:
        r = http.post("/devices/cred-4/credentials")
        assert r.status_code == 503 and "retry" in r.json()["detail"]
