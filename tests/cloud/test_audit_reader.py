"""Reading the safety audit trails (issue 14's three tables) as ops and compliance do: the rows are written
by the real actions (a confirmed weakening override and a clear over the API, a protocol pushed past a
blocked safety gate through a real broker, a health-data read by a token with the grant), then read back
with `microfleet audit list` and `GET /audit` on a scratch database. Only admins read the audit, and it
shows the audit rows, never the health data they are about."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app as microfleet
from cloud.api.models import Role
from cloud.audit.queries import Kind, Selection, list_entries
from cloud.config import CloudConfig
from contract.protocol import starter_protocol
from contract.signing import SigningKey
from tests.cloud.test_api_support import ApiServer, execute, migrated_database, mint, mint_all, serve
from tests.support.services import Mosquitto

runner = CliRunner()
WIDE = {"COLUMNS": "400"}  # rich wraps table cells at the terminal's width


def cli(dsn: str, *args: str) -> Any:
    return runner.invoke(microfleet, ["audit", "list", *args], env={**WIDE, "MICROFLEET_DATABASE_URL": dsn})


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with migrated_database() as d:
        yield d


@pytest.fixture(scope="module")
def api(dsn: str, module_broker: Mosquitto) -> Iterator[ApiServer]:
    with serve(CloudConfig(database_url=dsn, mqtt_url=module_broker.url)) as server:
        server.app.state.signing_key = SigningKey.generate()
        yield server


@pytest.fixture(scope="module")
def keys(dsn: str) -> dict[Role, str]:
    return mint_all(dsn)


@pytest.fixture(scope="module")
def trail(api: ApiServer, dsn: str, keys: dict[Role, str]) -> None:
    """Four audited actions, in this order, through the real writers."""
    execute(dsn, "insert into devices (device_id, model, state) values (%s, 'mf-home-1', 'online')", [
        ("aud-ovr",), ("aud-gate",),
    ])  # fmt: skip
    execute(dsn, "insert into device_profiles (device_id, pregnancy) values (%s, true)", [("aud-gate",)])
    with api.client(keys[Role.OPERATOR]) as op:
        weaken = {
            "overrides": {"t7": {"enabled": False}},
            "reason": "sensor recalibration [/ticket 42]",
            "confirm_weaken_critical": True,
        }
        r = op.put("/devices/aud-ovr/alert-overrides", json=weaken)
        assert r.status_code == 200, r.text
        assert op.delete("/devices/aud-ovr/alert-overrides").status_code == 200
    with api.client(keys[Role.ADMIN]) as admin:
        push = {
            "protocol": msgspec.to_builtins(
                msgspec.structs.replace(starter_protocol(datetime.now(UTC)), protocol_id="aud-proto")
            ),
            "devices": ["aud-gate"],
            "override_safety_gate": "dermatologist approved in writing",
        }
        r = admin.post("/protocols", json=push)
        assert r.status_code == 201, r.text
        assert (r.json()["gate_overridden"], r.json()["sent"]) == (["aud-gate"], 1)  # the broker took it
        profile = {"tz": "UTC", "contraindications": {"epilepsy": True}, "notes": "seizure in March"}
        r = admin.post("/devices", json={"device_id": "aud-read", "model": "mf-home-1", "profile": profile})
        assert r.status_code == 201, r.text
    with api.client(mint(dsn, Role.VIEWER, "dr-audit", health_data=True)) as clinician:
        r = clinician.get("/devices/aud-read/profile")
        assert r.status_code == 200 and r.json()["contraindications"]["epilepsy"] is True


def test_admins_read_every_kind_newest_first_and_the_rows_hold_no_health_data(
    api: ApiServer, keys: dict[Role, str], trail: None
) -> None:
    with api.client(keys[Role.ADMIN]) as admin:
        r = admin.get("/audit")
        assert r.status_code == 200, r.text
        got = r.json()
    assert [(e["kind"], e["device_id"], e["by"], e["reason"]) for e in got] == [
        ("health-reads", "aud-read", "dr-audit", ""),
        ("gates", "aud-gate", "test-admin", "dermatologist approved in writing"),
        ("overrides", "aud-ovr", "test-operator", ""),
        ("overrides", "aud-ovr", "test-operator", "sensor recalibration [/ticket 42]"),
    ]
    read, gate, cleared, weakened = (e["detail"] for e in got)
    assert read["route"] == "GET /devices/{device_id}/profile" and isinstance(read["token_id"], int)
    assert gate == {"protocol_id": "aud-proto", "version": 1}
    assert weakened == {
        "before": {},
        "after": {"t7": {"enabled": False}},
        "weakened": [{"field": "t7.enabled", "from": True, "to": False}],
        "confirmed": True,
    }
    assert cleared["after"] == {} and cleared["before"] == {"t7": {"enabled": False}}
    ats = [datetime.fromisoformat(e["at"]) for e in got]
    assert ats == sorted(ats, reverse=True)
    # the audit says who read which device, never what they read
    assert "epilepsy" not in r.text and "seizure" not in r.text and "pregnan" not in r.text


def test_filters_narrow_the_trail(api: ApiServer, keys: dict[Role, str], trail: None) -> None:
    def kinds_devices(**params: Any) -> list[tuple[str, str]]:
        with api.client(keys[Role.ADMIN]) as admin:
            r = admin.get("/audit", params=params)
        assert r.status_code == 200, r.text
        return [(e["kind"], e["device_id"]) for e in r.json()]

    assert kinds_devices(kind="gates") == [("gates", "aud-gate")]
    assert kinds_devices(kind=["gates", "health-reads"]) == [
        ("health-reads", "aud-read"),
        ("gates", "aud-gate"),
    ]
    assert kinds_devices(device_id="aud-ovr") == [("overrides", "aud-ovr")] * 2
    assert kinds_devices(by="dr-audit") == [("health-reads", "aud-read")]
    assert kinds_devices(limit=1) == [("health-reads", "aud-read")]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert kinds_devices(since=future) == []
    assert len(kinds_devices(until=future)) == 4
    assert kinds_devices(device_id="nobody") == []
    with api.client(keys[Role.ADMIN]) as admin:
        assert admin.get("/audit", params={"kind": "everything"}).status_code == 422
        assert admin.get("/audit", params={"since": "2026-01-01T00:00"}).status_code == 422  # no zone
        assert admin.get("/audit", params={"limit": 0}).status_code == 422


def test_only_admins_read_the_audit(api: ApiServer, dsn: str, keys: dict[Role, str], trail: None) -> None:
    for role in (Role.VIEWER, Role.OPERATOR):
        with api.client(keys[role]) as http:
            r = http.get("/audit")
            assert r.status_code == 403 and "admin role" in r.json()["detail"], role
    # the health-data grant does not open the audit: the grant reads health data, the audit is for admins
    with api.client(mint(dsn, Role.VIEWER, "dr-grant", health_data=True)) as clinician:
        assert clinician.get("/audit").status_code == 403
    with api.client() as anonymous:
        assert anonymous.get("/audit").status_code == 401


def test_cli_lists_the_same_rows_as_the_api(
    api: ApiServer, dsn: str, keys: dict[Role, str], trail: None
) -> None:
    with api.client(keys[Role.ADMIN]) as admin:
        from_api = admin.get("/audit").json()
    out = runner.invoke(microfleet, ["audit", "list", "--json", "--database-url", dsn])
    assert out.exit_code == 0, out.output
    from_cli = json.loads(out.stdout)

    def same(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            (
                e["kind"],
                e["id"],
                datetime.fromisoformat(e["at"]),
                e["device_id"],
                e["by"],
                e["reason"],
                e["detail"],
            )
            for e in rows
        ]

    assert same(from_cli) == same(from_api) and len(from_cli) == 4
    table = cli(dsn, "--kind", "overrides", "--device", "aud-ovr")
    assert table.exit_code == 0, table.output
    assert "audit (overrides): 2 row(s), newest first" in table.stdout
    assert "set t7.enabled=False; WEAKENED t7.enabled True -> False (confirmed)" in table.stdout
    assert "sensor recalibration [/ticket 42]" in table.stdout and "cleared" in table.stdout
    newest = cli(dsn, "--kind", "gates", "--kind", "health-reads", "--limit", "1")
    assert newest.exit_code == 0, newest.output
    assert "1 row(s), newest first (the limit: there may be more" in newest.stdout
    assert "dr-audit" in newest.stdout and "GET /devices/{device_id}/profile" in newest.stdout
    assert "aud-gate" not in newest.stdout and "epilepsy" not in newest.stdout
    gates = cli(dsn, "--kind", "gates", "--by", "test-admin", "--since", "1h")
    assert "sent aud-proto v1 past a blocked safety gate" in gates.stdout and "1 row(s)" in gates.stdout
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert json.loads(cli(dsn, "--json", "--since", future).stdout) == []


def test_cli_refuses_bad_input(dsn: str) -> None:
    bad_kind = runner.invoke(microfleet, ["audit", "list", "--kind", "everything", "--database-url", dsn])
    assert bad_kind.exit_code == 2 and "everything" in bad_kind.output
    bad_since = runner.invoke(
        microfleet, ["audit", "list", "--since", "yesterday-ish", "--database-url", dsn]
    )
    assert bad_since.exit_code == 2 and "use an ISO time" in bad_since.output
    unreachable = runner.invoke(
        microfleet, ["audit", "list", "--database-url", "postgresql://postgres@127.0.0.1:1/x"]
    )
    assert unreachable.exit_code == 1 and "error:" in unreachable.output


def test_the_limit_is_of_the_merged_trail(dsn: str, trail: None) -> None:
    """Each table gives its newest `limit` rows and the merge keeps the newest `limit` overall."""
    with psycopg.connect(dsn) as conn:
        every = list_entries(conn, Selection())
        for n in range(1, len(every) + 1):
            assert list_entries(conn, Selection(limit=n)) == every[:n]
        only = list_entries(conn, Selection((Kind.OVERRIDES,), limit=1))
    assert [e.kind for e in every].count(Kind.OVERRIDES) == 2 and only == [every[2]]
    with pytest.raises(ValueError, match="limit"):
        Selection(limit=0)
