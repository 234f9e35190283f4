"""Dashboards as code: the generated JSON is current, panels point at the provisioned datasource, and
the Grafana macro renderer expands like Grafana's PostgreSQL datasource."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from cloud.dashboards.catalog import DASHBOARDS, DEFAULT_OUT, build, rendered
from cloud.dashboards.macros import All, MacroError, expand, parse_interval

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 4, 21, 5, 1, 17, tzinfo=UTC)
T1 = datetime(2024, 4, 21, 5, 6, 17, 500000, tzinfo=UTC)


def test_generated_files_are_up_to_date() -> None:
    on_disk = {p.name: p.read_text() for p in DEFAULT_OUT.glob("*.json")}
    assert on_disk == rendered(), "run `microfleet dashboards build` and commit deploy/grafana/dashboards/"


def test_build_writes_every_dashboard_and_removes_stale_ones(tmp_path: Path) -> None:
    (tmp_path / "mf-retired.json").write_text("{}")
    written = build(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{d.uid}.json" for d in DASHBOARDS)
    assert not (tmp_path / "mf-retired.json").exists()
    assert build(tmp_path) == written  # idempotent


def test_panels_use_the_provisioned_datasource_and_every_variable() -> None:
    provisioned = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/microfleet.yaml").read_text()
    )
    (source,) = provisioned["datasources"]
    for name, text in rendered().items():
        board = json.loads(text)
        names = {v["name"] for v in board["templating"]["list"]}
        assert names - {"rollout"} == {"model", "firmware", "protocol", "tz"}, name
        assert ("rollout" in names) == (name == "mf-ota.json")
        assert board["panels"], name
        for panel in board["panels"]:
            for target in panel["targets"]:
                if target["datasource"]["type"] == "prometheus":  # tests/cloud/test_dashboards_prom.py
                    continue
                assert target["datasource"] == {"type": source["type"], "uid": source["uid"]}, name
                assert target["rawSql"].strip()
        assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
        assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in board["panels"])


def test_rollout_variable_is_single_value_newest_first() -> None:
    board = json.loads(rendered()["mf-ota.json"])
    (rollout,) = [v for v in board["templating"]["list"] if v["name"] == "rollout"]
    assert rollout["type"] == "query" and not rollout["multi"] and not rollout["includeAll"]
    assert "current" not in rollout or not rollout["current"]  # Grafana starts on the first (newest) row
    assert rollout["query"].rstrip().endswith("ORDER BY r.rollout_id DESC") and rollout["sort"] == 0


def test_stacked_bar_charts() -> None:
    for name in ("mf-safety.json", "mf-ota.json"):
        bars = [p for p in json.loads(rendered()[name])["panels"] if p["type"] == "barchart"]
        assert any(p["options"].get("stacking") == "normal" for p in bars), name


def test_time_macros_expand_like_grafana() -> None:
    sql = "SELECT $__timeGroupAlias(ts, '5m'), x FROM t WHERE $__timeFilter(ts) AND a > $__timeFrom() AND a < $__timeTo()"
    plain = expand(sql, start=T0, end=T1, variables={})
    assert plain == (
        'SELECT floor(extract(epoch from ts)/300)*300 AS "time", x FROM t WHERE ts BETWEEN '
        "'2024-04-21T05:01:17Z' AND '2024-04-21T05:06:17.5Z' AND a > '2024-04-21T05:01:17Z' "
        "AND a < '2024-04-21T05:06:17.5Z'"
    )
    tsdb = expand("SELECT $__timeGroup(ts, $__interval)", start=T0, end=T1, variables={}, timescaledb=True,
                  interval=timedelta(minutes=1))  # fmt: skip
    assert tsdb == "SELECT time_bucket('60s',ts)"
    assert expand("$__time(c)", start=T0, end=T1, variables={}) == 'c AS "time"'
    other_zone = T0.astimezone(ZoneInfo("Europe/Paris"))
    assert "'2024-04-21T05:01:17Z'" in expand("$__timeFrom()", start=other_zone, end=T1, variables={})


def test_variables_expand_like_grafana_sql_datasources() -> None:
    sql = "WHERE ('__all' IN ($model) OR m IN ($model)) AND tz = '$tz' AND f IN (${firmware}) AND p = [[p]]"
    out = expand(
        sql,
        start=T0,
        end=T1,
        variables={"model": All("'__all'"), "tz": "Europe/Paris", "firmware": ("1.0", "o'k"), "p": "x"},
    )
    assert out == (
        "WHERE ('__all' IN ('__all') OR m IN ('__all')) AND tz = 'Europe/Paris' "
        "AND f IN ('1.0','o''k') AND p = x"
    )


@pytest.mark.parametrize(
    ("sql", "variables"),
    [
        ("SELECT $missing", {}),
        ("SELECT $__nope(x)", {}),
        ("SELECT $__timeGroup(x)", {}),
        ("SELECT $__timeGroup(x, 'often')", {}),
        ("SELECT 1 WHERE a IN ($m)", {"m": ()}),
    ],
)
def test_bad_macros_and_variables_are_refused(sql: str, variables: dict[str, tuple[str, ...]]) -> None:
    with pytest.raises(MacroError):
        expand(sql, start=T0, end=T1, variables=variables)


def test_intervals() -> None:
    assert parse_interval("'1d'") == timedelta(days=1)
    assert parse_interval("90s") == timedelta(seconds=90)
    assert parse_interval("250ms") == timedelta(milliseconds=250)
