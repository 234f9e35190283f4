"""Rule parameters per device: defaults of the protocol it runs (variant, phase schedule) < its model <
its own overrides; bad overrides are refused with their name when set, and skipped (not fatal) when a
stored one no longer applies. Then on PostgreSQL: the engine reads them with every batch, and ops set
them with the CLI and the API."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
import pytest
from typer.testing import CliRunner

from cloud.alerts.cli import app as alerts_cli
from cloud.alerts.config import AlertConfig
from cloud.alerts.device_params import params_of
from cloud.alerts.engine import Engine
from cloud.alerts.params import ParamsError, params_for_device
from cloud.api.tokens import Role
from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from contract.messages import Zone
from contract.protocol import PhaseSchedule, TreatmentProtocol, ZoneLimit
from tests.cloud.test_alerts_engine_support import session, wire
from tests.cloud.test_api_support import migrated_database, mint_all, serve

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def protocol(variant: str = "standard", **kw: object) -> TreatmentProtocol:
    return TreatmentProtocol(
        protocol_id=f"home-{variant}",
        version=3,
        models=("mf-home-1",),
        variant=variant,
        issued_at=T0,
        level_current_ua=(80.0, 160.0, 240.0, 320.0, 400.0),
        zones=(ZoneLimit(Zone.CHEEK_L, 400.0, 300.0),),
        **kw,  # type: ignore[arg-type]
    )


def test_layers_protocol_then_model_then_device() -> None:
    plain = params_for_device("mf-home-1")
    assert (plain.o2.warn_daily_s, plain.o5.maintenance_max_days_per_week) == (1200.0, 3)
    sensitive = params_for_device("mf-home-1", protocol("sensitive"))
    assert sensitive.o2.warn_daily_s == 900.0  # the sensitive-skin defaults
    slow = params_for_device(
        "mf-home-1", protocol(maintenance=PhaseSchedule(max_days_per_week=2), intensive_days=30)
    )
    assert (slow.o5.maintenance_max_days_per_week, slow.o5.intensive_days) == (
        2,
        30,
    )  # the protocol's schedule
    assert slow.hw.max_ua == plain.hw.max_ua  # the model layer still applies on top of the protocol
    pro = params_for_device("mf-home-1", protocol("pro"))
    assert not pro.o5.enabled and pro.t8.enabled  # the professional profile
    assert params_for_device("mf-pro-1").o5.enabled is False  # a professional model is pro anyway
    mine = params_for_device("mf-home-1", protocol("sensitive"), {"o2": {"warn_daily_s": 600}})
    assert mine.o2.warn_daily_s == 600.0  # the device's own override wins


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"o9": {"x": 1}}, "unknown section 'o9'"),
        ({"o2": {"warn_daily": 600}}, "O2 has no parameter ['warn_daily']"),
        ({"o2": {"warn_daily_s": -5}}, "must be >= 0"),
        ({"o2": 5}, "o2 must map parameter names to values"),
    ],
)
def test_bad_overrides_are_refused_with_their_name(overrides: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ParamsError) as err:
        params_for_device("mf-home-1", None, overrides)
    assert message.lower() in str(err.value).lower() and "device override" in str(err.value)


def test_a_stored_override_that_no_longer_applies_is_skipped_not_fatal() -> None:
    doc = msgspec.json.encode(protocol("sensitive")).decode()
    got = params_of("mf-home-1", doc, json.dumps({"o2": {"renamed_field": 1}}))
    assert got == params_for_device("mf-home-1", protocol("sensitive"))  # protocol and model still apply
    assert params_of("mf-home-1", "not json", None) == params_for_device("mf-home-1")


@pytest.fixture
def dsn(database_url: str) -> str:
    migrate(database_url)
    return database_url


def seed_devices(conn: psycopg.Connection) -> None:  # type: ignore[type-arg]
    doc = msgspec.json.encode(protocol("sensitive")).decode()
    conn.execute(
        "insert into protocols (protocol_id, version, document, signed, key_id) values (%s, 3, %s, '{}', 'k')",
        ("home-sensitive", doc),
    )
    conn.execute(
        "insert into devices (device_id, model, protocol_id, protocol_version) values "
        "('std-1', 'mf-home-1', null, null), ('sens-1', 'mf-home-1', 'home-sensitive', 3), "
        "('mine-1', 'mf-home-1', null, null)"
    )


def test_the_engine_uses_the_protocol_and_the_overrides_of_each_device(dsn: str) -> None:
    cfg = AlertConfig(database_url=dsn, mqtt_url="mqtt://127.0.0.1:1")
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed_devices(conn)
        conn.execute(
            "insert into alert_rule_overrides (device_id, overrides) values ('mine-1', %s)",
            (json.dumps({"o2": {"warn_daily_s": 600}}),),
        )
        for dev in ("std-1", "sens-1", "mine-1"):  # one 16-minute session each
            msgs = session(dev, f"{dev}-s", T0, 0, active_s=960.0)
            Engine(cfg).process(conn, [wire(m) for m in msgs], T0 + timedelta(hours=1))
        o2 = conn.execute("select device_id from alerts where rule_id = 'O2' order by 1").fetchall()
    # 16 min: under the standard 20-min warning, over the sensitive 15 and the device's own 10
    assert [r[0] for r in o2] == ["mine-1", "sens-1"]


def test_ops_set_show_and_clear_overrides_with_the_cli(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROFLEET_DATABASE_URL", dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed_devices(conn)
    cli = CliRunner()
    bad = cli.invoke(alerts_cli, ["override", "sens-1", "--by", "ops-anna", "--set", "o2.warn_dayly_s=600"])
    assert bad.exit_code == 1 and "has no parameter ['warn_dayly_s']" in bad.output
    assert cli.invoke(alerts_cli, ["override", "sens-1", "--by", "ops-anna"]).exit_code == 2
    ok = cli.invoke(
        alerts_cli,
        [
            "override",
            "sens-1",
            "--by",
            "ops-anna",
            "--set",
            "o2.warn_daily_s=600",
            "--set",
            "t4.warn_events=4",
        ],
    )
    assert ok.exit_code == 0, ok.output
    shown = json.loads(cli.invoke(alerts_cli, ["params", "sens-1", "--json"]).output)
    assert shown["protocol"] == "home-sensitive v3" and shown["updated_by"] == "ops-anna"
    assert shown["overrides"] == {"o2": {"warn_daily_s": 600}, "t4": {"warn_events": 4}}
    assert shown["params"]["o2"]["warn_daily_s"] == 600.0 and shown["params"]["t4"]["warn_events"] == 4
    assert shown["params"]["o2"]["alert_daily_s"] == 1800.0  # the sensitive protocol's, untouched
    assert cli.invoke(alerts_cli, ["override", "sens-1", "--by", "ops-anna", "--clear"]).exit_code == 0
    shown = json.loads(cli.invoke(alerts_cli, ["params", "sens-1", "--json"]).output)
    assert shown["overrides"] == {} and shown["params"]["o2"]["warn_daily_s"] == 900.0
    assert cli.invoke(alerts_cli, ["params", "nobody"]).exit_code == 1


def test_the_api_reads_for_viewers_and_validates_for_operators() -> None:
    with migrated_database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            seed_devices(conn)
        tokens = mint_all(dsn)
        with serve(CloudConfig(database_url=dsn)) as api:
            viewer, operator = api.client(tokens[Role.VIEWER]), api.client(tokens[Role.OPERATOR])
            got = viewer.get("/devices/sens-1/alert-params")
            assert got.status_code == 200 and got.json()["params"]["o2"]["warn_daily_s"] == 900.0
            body = {"overrides": {"o2": {"warn_daily_s": 600}}, "reason": "dermatologist"}
            assert viewer.put("/devices/sens-1/alert-overrides", json=body).status_code == 403
            bad = operator.put("/devices/sens-1/alert-overrides", json={"overrides": {"o2": {"nope": 1}}})
            assert bad.status_code == 400 and "no parameter ['nope']" in bad.json()["detail"]
            put = operator.put("/devices/sens-1/alert-overrides", json=body)
            assert put.status_code == 200, put.text
            assert put.json()["params"]["o2"]["warn_daily_s"] == 600.0
            assert put.json()["reason"] == "dermatologist" and put.json()["updated_by"] == "test-operator"
            cleared = operator.delete("/devices/sens-1/alert-overrides")
            assert cleared.status_code == 200 and cleared.json()["overrides"] == {}
            assert viewer.get("/devices/nobody/alert-params").status_code == 404
