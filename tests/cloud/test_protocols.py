"""Treatment protocols in the cloud: the CLI and the API refuse an over-limit protocol (naming field and
limit) and store nothing; publish, list, show and status over real HTTP, a real broker and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt
import psycopg
import pytest
from typer.testing import CliRunner

from cloud.api.models import Role
from cloud.config import CloudConfig
from cloud.protocols import api as protocols_api
from cloud.protocols.cli import EXIT_REFUSED, app
from cloud.protocols.publish import Targets, models_of, validate
from cloud.protocols.store import Target
from contract.protocol import TreatmentProtocol, starter_protocol
from contract.signing import SignedDocument, SigningKey, TrustStore
from tests.cloud.test_api_support import ApiServer, execute, migrated_database, mint_all, serve, wait_for
from tests.support.services import Mosquitto

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
runner = CliRunner()


def over_limit() -> TreatmentProtocol:
    return msgspec.structs.replace(starter_protocol(NOW), level_current_ua=(80.0, 160.0, 240.0, 320.0, 450.0))


def write(path: Path, protocol: TreatmentProtocol) -> Path:
    path.write_bytes(msgspec.json.encode(protocol))
    return path


def test_validation_names_every_field_and_limit_per_model() -> None:
    p = msgspec.structs.replace(over_limit(), models=("mf-home-1", "mf-home-mini"), session_max_s=1500)
    found = validate(p, ["mf-home-1", "mf-home-mini"])
    assert {m: [(v.field, v.limit) for v in vs] for m, vs in found.items()} == {
        "mf-home-1": [("level_current_ua[5]", 400), ("session_max_s", 1200)],
        "mf-home-mini": [
            ("level_current_ua[5]", 350),
            ("zones[forehead].max_current_ua", 350),
            ("zones[cheek_l].max_current_ua", 350),
            ("zones[cheek_r].max_current_ua", 350),
            ("zones[jaw_l].max_current_ua", 350),
            ("zones[jaw_r].max_current_ua", 350),
            ("zones[neck].max_current_ua", 350),
            ("zones[lip].max_current_ua", 350),
            ("session_max_s", 1200),
        ],
    }
    assert validate(starter_protocol(NOW), ["mf-home-1"]) == {}
    # a device that never reported counts as every model the protocol lists
    both = msgspec.structs.replace(starter_protocol(NOW), models=("mf-home-1", "mf-pro-1"))
    assert models_of(both, Targets(devices=("d",)), [Target("d", None, "device")]) == {
        "mf-home-1",
        "mf-pro-1",
    }
    assert models_of(both, Targets(models=("mf-home-1",)), [Target("d", "mf-home-1", "model")]) == {
        "mf-home-1"
    }


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    bad = runner.invoke(app, ["validate", str(write(tmp_path / "bad.json", over_limit()))])
    assert bad.exit_code == EXIT_REFUSED
    assert "mf-home-1: level_current_ua[5]=450.0: above the model's rated maximum (limit 400)" in bad.output
    good = runner.invoke(app, ["validate", str(write(tmp_path / "ok.json", starter_protocol(NOW)))])
    assert good.exit_code == 0, good.output
    assert "home-starter v1: OK for mf-home-1" in good.output
    (tmp_path / "junk.json").write_text('{"protocol_id": "x"}')
    junk = runner.invoke(app, ["validate", str(tmp_path / "junk.json")])
    assert junk.exit_code == EXIT_REFUSED and "not a valid treatment protocol" in junk.output


# -- against the database, the broker and the HTTP API -----------------------------------------------


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
def api(dsn: str, module_broker: Mosquitto, key: tuple[SigningKey, Path]) -> Iterator[ApiServer]:
    with serve(CloudConfig(database_url=dsn, mqtt_url=module_broker.url)) as server:
        server.app.include_router(protocols_api.router)
        server.app.state.signing_key = key[0]
        yield server


def rows(dsn: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql.encode()).fetchall()


def retained(broker: Mosquitto, topic: str) -> bytes | None:
    """The retained message on a topic, as a newcomer gets it (None if there is none). The broker sends
    retained messages right after the SUBACK, so once our own marker message comes back, it would have
    arrived before it."""
    got: list[bytes] = []
    marker = f"test/marker/{uuid.uuid4().hex}"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe([(topic, 1), (marker, 1)])
    client.on_subscribe = lambda c, *_: c.publish(marker, b"end", qos=1)
    client.on_message = lambda _c, _u, m: got.append(bytes(m.payload) if m.topic == topic else b"")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        wait_for(lambda: b"" in got, 5, "the marker message")
    finally:
        client.disconnect()
        client.loop_stop()
    return next((g for g in got if g), None)


def test_cli_publish_refuses_over_limit_and_stores_nothing(
    tmp_path: Path, dsn: str, module_broker: Mosquitto, key: tuple[SigningKey, Path]
) -> None:
    env = {
        "MICROFLEET_DATABASE_URL": dsn,
        "MICROFLEET_MQTT_URL": module_broker.url,
        "MICROFLEET_SIGNING_KEY_FILE": str(key[1]),
    }
    file = write(tmp_path / "over.json", msgspec.structs.replace(over_limit(), protocol_id="cli-over"))
    r = runner.invoke(app, ["publish", str(file), "--device", "dev-cli-1"], env=env)
    assert r.exit_code == EXIT_REFUSED
    assert "level_current_ua[5]=450.0" in r.output and "(limit 400)" in r.output
    assert rows(dsn, "select count(*) from protocols where protocol_id = 'cli-over'") == [(0,)]
    assert retained(module_broker, "mf/v1/dev-cli-1/down/protocol") is None
    # no signing key: a clear operational error, nothing stored either
    ok = write(tmp_path / "ok.json", msgspec.structs.replace(starter_protocol(NOW), protocol_id="cli-ok"))
    r = runner.invoke(
        app, ["publish", str(ok), "--device", "dev-cli-1"], env=env | {"MICROFLEET_SIGNING_KEY_FILE": ""}
    )
    assert r.exit_code == 1 and "MICROFLEET_SIGNING_KEY_FILE" in r.output
    r = runner.invoke(app, ["publish", str(ok), "--device", "dev-cli-1"], env=env)
    assert r.exit_code == 0, r.output
    doc = msgspec.json.decode(
        retained(module_broker, "mf/v1/dev-cli-1/down/protocol") or b"", type=SignedDocument
    )
    assert TrustStore([key[0].trusted()]).verify_as(doc, NOW, TreatmentProtocol).protocol_id == "cli-ok"
    # the same version with another document is refused: versions are immutable
    changed = write(
        tmp_path / "changed.json",
        msgspec.structs.replace(starter_protocol(NOW), protocol_id="cli-ok", session_max_s=300),
    )
    r = runner.invoke(app, ["publish", str(changed), "--device", "dev-cli-1"], env=env)
    assert r.exit_code == 1 and "publish it as version 2" in r.output
    shown = runner.invoke(app, ["show", "cli-ok"], env=env)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["key_id"] == key[0].key_id
    listed = runner.invoke(app, ["list", "cli-ok"], env=env)
    assert listed.exit_code == 0 and "cli-ok v1" in listed.output and "assigned 1" in listed.output
    assert runner.invoke(app, ["show", "nope"], env=env).exit_code == 1


def test_api_publish_list_show_status(dsn: str, api: ApiServer, module_broker: Mosquitto) -> None:
    keys = mint_all(dsn)
    execute(
        dsn,
        "insert into devices (device_id, model, state, tags) values (%s, %s, %s, %s)",
        [
            ("dev-api-1", "mf-home-1", "online", ["eu", "beta"]),
            ("dev-api-2", "mf-home-1", "offline", ["eu"]),
            ("dev-api-3", "mf-pro-1", "online", ["beta"]),
        ],
    )
    body = {
        "protocol": msgspec.to_builtins(msgspec.structs.replace(over_limit(), protocol_id="api-p")),
        "to_tags": ["eu"],
    }
    with api.client(keys[Role.VIEWER]) as viewer:
        assert viewer.post("/protocols", json=body).status_code == 403
    with api.client(keys[Role.OPERATOR]) as http:
        r = http.post("/protocols", json=body)
        assert r.status_code == 422, r.text
        [problem] = r.json()["detail"]
        assert (problem["model"], problem["field"], problem["value"], problem["limit"]) == (
            "mf-home-1",
            "level_current_ua[5]",
            450.0,
            400.0,
        )
        assert problem["loc"] == ["body", "protocol", "level_current_ua", "5"]
        assert rows(dsn, "select count(*) from protocols where protocol_id = 'api-p'") == [(0,)]
        # tag "beta" reaches a mf-pro-1 the protocol is not for: refused as well
        good = msgspec.to_builtins(msgspec.structs.replace(starter_protocol(NOW), protocol_id="api-p"))
        r = http.post("/protocols", json={"protocol": good, "to_tags": ["beta"]})
        assert r.status_code == 422 and r.json()["detail"][0]["model"] == "mf-pro-1"
        assert (
            http.post("/protocols", json={"protocol": {"protocol_id": "x"}, "devices": ["a"]}).status_code
            == 422
        )
        assert http.post("/protocols", json={"protocol": good, "to_tags": ["none"]}).status_code == 404

        r = http.post("/protocols", json={"protocol": good, "to_tags": ["eu"]})
        assert r.status_code == 201, r.text
        assert r.json() | {"seconds": 0} == {
            "protocol_id": "api-p",
            "version": 1,
            "new_version": True,
            "devices": 2,
            "sent": 2,
            "refused": 0,
            "seconds": 0,
            "skipped_blocked": [],
            "gate_overridden": [],
        }
        assert retained(module_broker, "mf/v1/dev-api-2/down/protocol") is not None
        assert retained(module_broker, "mf/v1/dev-api-3/down/protocol") is None
        assert rows(
            dsn,
            "select device_id, selector, assigned_by from protocol_assignments where protocol_id = 'api-p' order by 1",
        ) == [
            ("dev-api-1", "tag=eu", "test-operator"),
            ("dev-api-2", "tag=eu", "test-operator"),
        ]
        listed = http.get("/protocols", params={"protocol_id": "api-p"}).json()
        assert [(v["version"], v["assigned"]) for v in listed] == [(1, 2)]
        shown = http.get("/protocols/api-p").json()
        assert shown["protocol"]["protocol_id"] == "api-p" and shown["signed"]["key_id"] == shown["key_id"]
        assert http.get("/protocols/api-p", params={"version": 9}).status_code == 404
        # dev-api-1 reports the version, dev-api-2 is offline and dev-api-1... is converged
        execute(
            dsn,
            "update devices set protocol_id = %s, protocol_version = %s where device_id = %s",
            [("api-p", 1, "dev-api-1")],
        )
        status = http.get("/protocols/api-p/status").json()
        assert {
            k: status[k] for k in ("targeted", "converged", "rejected", "pending", "offline", "done")
        } == {
            "targeted": 2,
            "converged": 1,
            "rejected": 0,
            "pending": 1,
            "offline": 1,
            "done": False,
        }
        execute(
            dsn,
            "insert into device_events (device_id, seq, at, event, value, detail) values (%s, %s, now(), %s, %s, %s)",
            [("dev-api-2", 7, "protocol_rejected", 1.0, "api-p v1: signature: unknown key 'x'")],
        )
        status = http.get("/protocols/api-p/status").json()
        assert (status["converged"], status["rejected"], status["pending"], status["done"]) == (1, 1, 0, True)
        assert status["rejections"] == [["dev-api-2", "api-p v1: signature: unknown key 'x'"]]
    r = runner.invoke(app, ["status", "api-p", "--json"], env={"MICROFLEET_DATABASE_URL": dsn})
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["converged"] == 1
