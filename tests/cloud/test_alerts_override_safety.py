"""Safety overrides as ops meet them (issue 14), through `microfleet alerts override` and
PUT /devices/{id}/alert-overrides on a scratch database: an override never leaves the model's hard limits
nor puts a warning above its alert level, and weakening a safety-critical rule (O1, T6, T7, C1) needs an
explicit confirmation with a reason; every change lands in the audit trail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cloud.alerts.cli import app as alerts_cli
from cloud.alerts.override_checks import Weakening, weakenings
from cloud.alerts.params import Policy, params_for_device
from cloud.api.models import Role
from cloud.config import CloudConfig
from tests.cloud.test_api_support import ApiServer, migrated_database, mint_all, serve

cli = CliRunner()


def test_weakenings_are_measured_against_the_device_without_overrides() -> None:
    base = params_for_device("mf-home-1")
    assert weakenings(base, base) == []
    looser = params_for_device(
        "mf-home-1",
        None,
        {"t7": {"enabled": False}, "t6": {"critical_ma_cm2": 3.0}, "c1": {"metal_implants": "advise"}},
    )
    assert weakenings(base, looser) == [
        Weakening("t7.enabled", True, False),
        Weakening("t6.critical_ma_cm2", 2.0, 3.0),
        Weakening("c1.metal_implants", Policy.BLOCK, Policy.ADVISE),
    ]
    stricter = params_for_device("mf-home-1", None, {"t7": {"model_margin": 1.0}, "o2": {"enabled": False}})
    assert weakenings(base, stricter) == []  # tighter T7; O2 is not a critical rule
    pro = params_for_device("mf-pro-1")
    assert weakenings(pro, pro) == []  # a clinic device has no auto-off: nothing to weaken there


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with migrated_database() as d:
        with psycopg.connect(d, autocommit=True) as conn:
            conn.execute(
                "insert into devices (device_id, model) values ('home-1', 'mf-home-1'), ('home-2', 'mf-home-1')"
            )
        yield d


def audit(dsn: str, device_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "select by_whom, reason, after, weakened, confirmed from alert_override_changes "
            "where device_id = %s order by id",
            (device_id,),
        ).fetchall()


def override(dsn: str, *args: str) -> Any:
    return cli.invoke(alerts_cli, ["override", *args], env={"MICROFLEET_DATABASE_URL": dsn})


def test_cli_keeps_overrides_within_hard_limits_and_confirms_weakening(dsn: str) -> None:
    over = override(dsn, "home-1", "--by", "ops", "--set", "hw.max_ua=900")
    assert over.exit_code == 1
    assert "hw.max_ua=900.0: above the mf-home-1 model's rated maximum 400" in over.output
    no_auto_off = override(dsn, "home-1", "--by", "ops", "--set", "hw.auto_off_s=null")
    assert no_auto_off.exit_code == 1 and "cannot be switched off" in no_auto_off.output
    upside_down = override(dsn, "home-1", "--by", "ops", "--set", "o2.warn_daily_s=3000")
    assert upside_down.exit_code == 1
    assert "o2.warn_daily_s=3000.0: above o2.alert_daily_s=2400.0" in upside_down.output
    # disabling the critical over-current rule: refused unless confirmed, with a reason
    off = override(dsn, "home-1", "--by", "ops", "--set", "t7.enabled=false")
    assert off.exit_code == 1
    assert "weakens safety-critical rules (t7.enabled True -> False)" in off.output
    assert "--confirm-weaken-critical" in off.output
    no_reason = override(
        dsn, "home-1", "--by", "ops", "--set", "t7.enabled=false", "--confirm-weaken-critical"
    )
    assert no_reason.exit_code == 1
    assert audit(dsn, "home-1") == []  # nothing refused was stored or audited
    ok = override(
        dsn,
        "home-1",
        "--by",
        "ops-anna",
        "--set",
        "t7.enabled=false",
        "--confirm-weaken-critical",
        "--reason",
        "probe replaced, T7 noisy until recalibration",
    )
    assert ok.exit_code == 0, ok.output
    assert "WEAKENED t7.enabled True -> False" in ok.output
    # a later, harmless change does not ask again for the weakening already confirmed
    more = override(dsn, "home-1", "--by", "ops-anna", "--set", "o2.warn_daily_s=900")
    assert more.exit_code == 0, more.output
    assert override(dsn, "home-1", "--by", "ops-bob", "--clear").exit_code == 0
    assert audit(dsn, "home-1") == [
        (
            "ops-anna",
            "probe replaced, T7 noisy until recalibration",
            {"t7": {"enabled": False}},
            [{"field": "t7.enabled", "from": True, "to": False}],
            True,
        ),
        ("ops-anna", "", {"t7": {"enabled": False}, "o2": {"warn_daily_s": 900}}, [], False),
        ("ops-bob", "", {}, [], False),
    ]


@pytest.fixture(scope="module")
def api(dsn: str) -> Iterator[ApiServer]:
    with serve(CloudConfig(database_url=dsn)) as server:
        yield server


def test_api_keeps_overrides_within_hard_limits_and_confirms_weakening(dsn: str, api: ApiServer) -> None:
    tokens = mint_all(dsn)
    url = "/devices/home-2/alert-overrides"
    with api.client(tokens[Role.OPERATOR]) as http:
        r = http.put(url, json={"overrides": {"hw": {"max_ua": 900}}})
        assert r.status_code == 400 and "rated maximum 400" in r.json()["detail"]
        r = http.put(url, json={"overrides": {"t6": {"warn_ma_cm2": 2.5}}})
        assert r.status_code == 400 and "above t6.critical_ma_cm2=2.0" in r.json()["detail"]
        looser = {"overrides": {"t6": {"critical_ma_cm2": 4.0}}, "reason": "trial"}
        r = http.put(url, json=looser)
        assert r.status_code == 409 and "t6.critical_ma_cm2 2.0 -> 4.0" in r.json()["detail"]
        r = http.put(url, json={**looser, "confirm_weaken_critical": True, "reason": " "})
        assert r.status_code == 409  # a confirmation needs a reason
        r = http.put(url, json={**looser, "confirm_weaken_critical": True})
        assert r.status_code == 200, r.text
        assert r.json()["params"]["t6"]["critical_ma_cm2"] == 4.0
        assert http.delete(url).status_code == 200
    rows = audit(dsn, "home-2")
    assert [(by, weakened, confirmed) for by, _r, _a, weakened, confirmed in rows] == [
        ("test-operator", [{"field": "t6.critical_ma_cm2", "from": 2.0, "to": 4.0}], True),
        ("test-operator", [], False),
    ]
    assert json.dumps(rows[0][2]) == '{"t6": {"critical_ma_cm2": 4.0}}'
