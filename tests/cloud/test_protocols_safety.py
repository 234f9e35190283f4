"""Protocol publishing as an operator meets it (issue 14), through the CLI and the HTTP API on a scratch
database and a real broker: the same file published again is a re-send of the stored signed document
(not a conflict), a changed document under the same version stays refused, and a device whose safety gate
is blocked (an open blocking contraindication) is skipped, unless an admin overrides with a reason."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from cloud.api.models import Role
from cloud.config import CloudConfig
from cloud.protocols import api as protocols_api
from cloud.protocols.cli import app
from contract.protocol import TreatmentProtocol, starter_protocol
from contract.signing import SigningKey
from tests.cloud.test_api_support import ApiServer, execute, migrated_database, mint_all, serve
from tests.cloud.test_protocols import retained, rows
from tests.support.services import Mosquitto, ProductionBroker

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
runner = CliRunner()


def protocol(protocol_id: str, **changes: object) -> TreatmentProtocol:
    return msgspec.structs.replace(starter_protocol(NOW), protocol_id=protocol_id, **changes)


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with migrated_database() as d:
        yield d


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningKey, Path]:
    k = SigningKey.generate()
    path = tmp_path_factory.mktemp("keys") / "signing.pem"
    path.write_bytes(k.to_pem())
    return k, path


@pytest.fixture(scope="module")
def env(dsn: str, module_broker: Mosquitto, key: tuple[SigningKey, Path]) -> dict[str, str]:
    return {
        "MICROFLEET_DATABASE_URL": dsn,
        "MICROFLEET_MQTT_URL": module_broker.url,
        "MICROFLEET_SIGNING_KEY_FILE": str(key[1]),
    }


@pytest.fixture(scope="module")
def api(dsn: str, module_broker: Mosquitto, key: tuple[SigningKey, Path]) -> Iterator[ApiServer]:
    with serve(CloudConfig(database_url=dsn, mqtt_url=module_broker.url)) as server:
        server.app.include_router(protocols_api.router)
        server.app.state.signing_key = key[0]
        yield server


def test_cli_publishing_the_same_file_again_is_a_resend(
    tmp_path: Path, dsn: str, module_broker: Mosquitto, env: dict[str, str]
) -> None:
    file = tmp_path / "p.json"
    file.write_bytes(msgspec.json.encode(protocol("resend-cli")))
    first = runner.invoke(app, ["publish", str(file), "--device", "dev-rs-1"], env=env)
    assert first.exit_code == 0, first.output
    sent = retained(module_broker, "mf/v1/dev-rs-1/down/protocol")
    again = runner.invoke(
        app, ["publish", str(file), "--device", "dev-rs-1", "--device", "dev-rs-2"], env=env
    )
    assert again.exit_code == 0, again.output
    assert "resend-cli v1 published to 2 devices" in again.output
    assert "(version already stored: re-sent)" in again.output
    # the stored signed document is what goes out again: no second signature, byte for byte the same
    assert retained(module_broker, "mf/v1/dev-rs-1/down/protocol") == sent
    assert retained(module_broker, "mf/v1/dev-rs-2/down/protocol") == sent
    assert rows(dsn, "select count(*) from protocols where protocol_id = 'resend-cli'") == [(1,)]
    # the same content spelled differently (integers for floats, other key order) is the same document
    doc = msgspec.to_builtins(protocol("resend-cli"))
    doc["level_current_ua"] = [80, 160, 240, 320, 400]
    file.write_bytes(msgspec.json.encode(dict(reversed(doc.items()))))
    assert runner.invoke(app, ["publish", str(file), "--device", "dev-rs-1"], env=env).exit_code == 0
    # a different content under the same version stays refused, saying what to do
    file.write_bytes(msgspec.json.encode(protocol("resend-cli", session_max_s=300)))
    changed = runner.invoke(app, ["publish", str(file), "--device", "dev-rs-1"], env=env)
    assert changed.exit_code == 1
    assert "already published with a different document: publish it as version 2" in changed.output
    assert retained(module_broker, "mf/v1/dev-rs-1/down/protocol") == sent


def test_api_publishing_the_same_protocol_again_is_a_resend(api: ApiServer, dsn: str) -> None:
    keys = mint_all(dsn)
    body = {"protocol": msgspec.to_builtins(protocol("resend-api")), "devices": ["dev-rs-3"]}
    with api.client(keys[Role.OPERATOR]) as http:
        first = http.post("/protocols", json=body)
        assert first.status_code == 201 and first.json()["new_version"] is True, first.text
        again = http.post("/protocols", json=body)
        assert again.status_code == 201, again.text
        assert (again.json()["new_version"], again.json()["sent"]) == (False, 1)
        changed = {**body, "protocol": msgspec.to_builtins(protocol("resend-api", session_max_s=300))}
        conflict = http.post("/protocols", json=changed)
        assert conflict.status_code == 409 and "publish it as version 2" in conflict.json()["detail"]


def blocked_fleet(dsn: str, prefix: str) -> None:
    """Three mf-home-1 devices tagged `prefix`: one pregnant user (profile only: the alert engine has not
    gated it yet), one already gated by the engine, one without any contraindication."""
    execute(
        dsn,
        "insert into devices (device_id, model, state, tags) values (%s, 'mf-home-1', 'online', %s)",
        [(f"{prefix}-preg", [prefix]), (f"{prefix}-gated", [prefix]), (f"{prefix}-ok", [prefix])],
    )
    execute(
        dsn, "insert into device_profiles (device_id, pregnancy) values (%s, %s)", [(f"{prefix}-preg", True)]
    )
    execute(
        dsn,
        "insert into safety_gates (device_id, blocked, reasons, updated_at) values (%s, true, %s, now())",
        [(f"{prefix}-gated", ["epilepsy"])],
    )


def test_cli_push_skips_devices_with_a_blocked_safety_gate(
    tmp_path: Path, dsn: str, module_broker: Mosquitto, env: dict[str, str]
) -> None:
    blocked_fleet(dsn, "gcli")
    file = tmp_path / "p.json"
    file.write_bytes(msgspec.json.encode(protocol("gate-cli")))
    r = runner.invoke(app, ["publish", str(file), "--to-tag", "gcli"], env=env)
    assert r.exit_code == 0, r.output  # skipped by policy and reported: not an error
    assert "gate-cli v1 published to 1 devices" in r.output
    assert "SKIPPED gcli-gated: safety gate blocked" in r.output
    assert "SKIPPED gcli-preg: safety gate blocked" in r.output
    assert "pregnancy" not in r.output and "epilepsy" not in r.output  # health data stays out of ops' view
    assert retained(module_broker, "mf/v1/gcli-ok/down/protocol") is not None
    assert retained(module_broker, "mf/v1/gcli-preg/down/protocol") is None
    assert retained(module_broker, "mf/v1/gcli-gated/down/protocol") is None
    assert rows(dsn, "select device_id from protocol_assignments where protocol_id = 'gate-cli'") == [
        ("gcli-ok",)
    ]
    # only blocked devices: nothing is stored or sent, and the error says what to do
    only = runner.invoke(app, ["publish", str(file), "--device", "gcli-preg"], env=env)
    assert only.exit_code == 1 and "blocked safety gate" in only.output and "override" in only.output
    # an explicit override with a reason sends, and is recorded per device
    forced = runner.invoke(
        app,
        [
            "publish",
            str(file),
            "--device",
            "gcli-preg",
            "--by",
            "dr-o",
            "--override-safety-gate",
            "OB approval",
        ],
        env=env,
    )
    assert forced.exit_code == 0, forced.output
    assert "OVERRIDDEN gcli-preg" in forced.output
    assert retained(module_broker, "mf/v1/gcli-preg/down/protocol") is not None
    assert rows(dsn, "select device_id, protocol_id, reason, by_whom from protocol_gate_overrides") == [
        ("gcli-preg", "gate-cli", "OB approval", "dr-o")
    ]


def test_api_push_skips_blocked_devices_and_an_override_needs_admin(
    api: ApiServer, dsn: str, module_broker: Mosquitto
) -> None:
    blocked_fleet(dsn, "gapi")
    keys = mint_all(dsn)
    body = {"protocol": msgspec.to_builtins(protocol("gate-api")), "to_tags": ["gapi"]}
    with api.client(keys[Role.OPERATOR]) as http:
        r = http.post("/protocols", json=body)
        assert r.status_code == 201, r.text
        assert (r.json()["devices"], r.json()["skipped_blocked"]) == (1, ["gapi-gated", "gapi-preg"])
        assert retained(module_broker, "mf/v1/gapi-preg/down/protocol") is None
        only = http.post("/protocols", json={**body, "to_tags": [], "devices": ["gapi-gated"]})
        assert only.status_code == 409 and "blocked safety gate" in only.json()["detail"]
        override = {**body, "override_safety_gate": "dermatologist approved"}
        assert http.post("/protocols", json=override).status_code == 403
    with api.client(keys[Role.ADMIN]) as admin:
        r = admin.post("/protocols", json=override)
        assert r.status_code == 201, r.text
        assert (r.json()["devices"], r.json()["skipped_blocked"]) == (3, [])
        assert r.json()["gate_overridden"] == ["gapi-gated", "gapi-preg"]
    assert retained(module_broker, "mf/v1/gapi-preg/down/protocol") is not None
    assert rows(
        dsn,
        "select device_id, by_whom from protocol_gate_overrides where protocol_id = 'gate-api' order by 1",
    ) == [("gapi-gated", "test-admin"), ("gapi-preg", "test-admin")]


def test_cli_push_a_broker_refuses_is_an_error(
    tmp_path: Path, dsn: str, prod: ProductionBroker, env: dict[str, str]
) -> None:
    """Skipping by policy is exit 0 (above); a message the broker refuses is exit 1. Here the identity is
    not the protocol publisher's (svc-alerts may send notices and gates, not protocols): PUBACK 0x87."""
    file = tmp_path / "p.json"
    file.write_bytes(msgspec.json.encode(protocol("refused-cli")))
    wrong = env | {"MICROFLEET_MQTT_URL": prod.service_url("svc-alerts")}
    r = runner.invoke(app, ["publish", str(file), "--device", "refused-1"], env=wrong)
    assert r.exit_code == 1, r.output
    assert "(0 acknowledged, 1 refused by the broker)" in r.output
