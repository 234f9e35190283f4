"""The OpenAPI document, fuzzed with schemathesis against the real server and database: no 5xx, and every
answer conforms to the document (status code, content type, headers, body schema)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from psycopg.types.json import Jsonb
from schemathesis import GenerationMode

from cloud.api.models import Role
from tests.cloud.test_api_support import (
    ApiServer,
    execute,
    migrated_database,
    mint,
    secured_broker,
    serve_with_broker,
)
from tests.support.services import Mosquitto

MAX_EXAMPLES = 20
ADMIN_PW = "fuzz-admin-secret"
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with migrated_database() as d:
        seed(d)
        yield d


def seed(dsn: str) -> None:
    """A little of everything, so that the fuzzer also meets 200s with full bodies."""
    now = datetime.now(UTC)
    execute(
        dsn,
        "insert into devices (device_id, model, fw_version, state, last_seen) values (%s, %s, %s, %s, %s)",
        [(f"dev-{i}", "mini", "1.0.0", "online", now) for i in range(3)],
    )
    execute(
        dsn,
        "insert into device_profiles (device_id, tz_name, pregnancy) values (%s, %s, %s)",
        [("dev-0", "UTC", True)],
    )
    execute(
        dsn,
        "insert into sessions (device_id, session_id, started_at, ended_at, zones) values (%s, %s, %s, %s, %s)",
        [("dev-0", "s-1", now - timedelta(hours=2), now - timedelta(hours=1), Jsonb({"cheek_L": 30}))],
    )
    execute(
        dsn,
        "insert into quarantine (topic, payload, payload_sha256, reason) values (%s, %s, %s, %s)",
        [("mf/v1/x/up/batch", b"\xff", hashlib.sha256(b"\xff").digest(), "not_json")],
    )


@pytest.fixture(scope="module")
def sbroker() -> Iterator[Mosquitto]:
    with secured_broker(ADMIN_PW) as broker:
        yield broker


@pytest.fixture(scope="module")
def api(dsn: str, sbroker: Mosquitto) -> Iterator[ApiServer]:
    with serve_with_broker(dsn, sbroker, ADMIN_PW) as server:
        yield server


@pytest.fixture(scope="module")
def admin_token(dsn: str) -> str:
    return mint(dsn, Role.ADMIN, "fuzzer")


def send(http: httpx.Client, case: schemathesis.Case[Any], headers: dict[str, str]) -> httpx.Response:
    """Send a generated case with httpx (schemathesis' own `requests` transport breaks when urllib3-future,
    pulled in by niquests, shadows urllib3 in the same environment)."""
    kwargs = case.as_transport_kwargs(base_url=str(http.base_url), headers=headers)
    body: dict[str, Any] = {}
    if "json" in kwargs:
        body["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        body["content"] = data if isinstance(data, bytes | str) else None
        if not isinstance(data, bytes | str):
            body["data"] = data
    return http.request(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params"),
        headers=kwargs.get("headers"),
        **body,
    )


def fuzz(
    http: httpx.Client,
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    headers: dict[str, str],
    mode: GenerationMode,
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case[Any]) -> None:
        case.validate_response(send(http, case, headers), checks=CHECKS, headers=headers)

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_openapi_document_holds(api: ApiServer, admin_token: str, mode: GenerationMode) -> None:
    """Every operation, MAX_EXAMPLES generated requests each (the schemathesis pytest plugin does not run
    on pytest 9 yet, so the operations are driven here with hypothesis)."""
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    headers = {"Authorization": f"Bearer {admin_token}"}
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 15
    failures: dict[str, BaseException] = {}
    with api.client() as http:
        for operation in operations:
            try:
                fuzz(http, operation, headers, mode)
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise
                # an operation without parameters or body (/healthz) has no invalid request to make
            except Exception as exc:
                failures[operation.label] = exc
    assert not failures, "\n\n".join(f"{label}:\n{exc}" for label, exc in failures.items())
