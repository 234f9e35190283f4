"""Specs -> typed grafana-foundation-sdk objects. The foundation SDK has no builder for the PostgreSQL
datasource's query, so `SqlQuery` is a small typed Dataquery variant of our own."""

from __future__ import annotations

import json
from typing import Any, Self

from grafana_foundation_sdk.builders import (
    barchart,
    bargauge,
    common,
    dashboard,
    piechart,
    prometheus,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import piechart as piechart_models

from cloud.dashboards.spec import ALL_VALUE, DashboardSpec, PanelSpec, VariableSpec, Viz

DATASOURCE_TYPE = "grafana-postgresql-datasource"
DATASOURCE_UID = "microfleet-tsdb"
DATASOURCE = dashboard_models.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)
# the services' own metrics (deploy/grafana/provisioning/datasources/prometheus.yaml)
PROMETHEUS = dashboard_models.DataSourceRef(type_val="prometheus", uid="microfleet-prometheus")


class SqlQuery(cogvariants.Dataquery):
    """A raw-SQL target of Grafana's PostgreSQL datasource (code mode)."""

    def __init__(self, raw_sql: str, fmt: str, ref_id: str = "A") -> None:
        self.raw_sql = raw_sql
        self.format = fmt
        self.ref_id = ref_id

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": DATASOURCE.to_json(),
            "editorMode": "code",
            "rawQuery": True,
            "format": self.format,
            "rawSql": self.raw_sql,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(str(data["rawSql"]), str(data.get("format", "table")), str(data.get("refId", "A")))


class SqlTarget(cogbuilder.Builder[SqlQuery]):
    def __init__(self, raw_sql: str, fmt: str) -> None:
        self._internal = SqlQuery(raw_sql.strip(), fmt)

    def build(self) -> SqlQuery:
        return self._internal


def _variable(spec: VariableSpec) -> cogbuilder.Builder[dashboard_models.VariableModel]:
    if spec.query and not spec.multi:
        return (
            dashboard.QueryVariable(spec.name)
            .label(spec.label)
            .datasource(DATASOURCE)
            .query(spec.query)
            .refresh(dashboard_models.VariableRefresh.ON_DASHBOARD_LOAD)
            .sort(dashboard_models.VariableSort.DISABLED)
            .multi(False)
            .include_all(False)
            .allow_custom_value(False)
        )
    if spec.query:
        all_option = dashboard_models.VariableOption(selected=True, text="All", value="$__all")
        return (
            dashboard.QueryVariable(spec.name)
            .label(spec.label)
            .datasource(DATASOURCE)
            .query(spec.query)
            .refresh(dashboard_models.VariableRefresh.ON_DASHBOARD_LOAD)
            .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
            .multi(spec.multi)
            .include_all(spec.include_all)
            .all_value(ALL_VALUE)
            .allow_custom_value(False)
            .current(all_option)
        )
    first = spec.options[0]
    return (
        dashboard.CustomVariable(spec.name)
        .label(spec.label)
        .values(",".join(spec.options))
        .multi(False)
        .allow_custom_value(False)
        .current(dashboard_models.VariableOption(selected=True, text=first, value=first))
    )


PanelBuilder = stat.Panel | timeseries.Panel | table.Panel | piechart.Panel | barchart.Panel | bargauge.Panel


def _panel(spec: PanelSpec, panel_id: int) -> PanelBuilder:
    all_rows = common.ReduceDataOptions().values(True).calcs([])
    last = common.ReduceDataOptions().values(False).calcs(["lastNotNull"])
    p: PanelBuilder
    if spec.viz is Viz.STAT:
        p = stat.Panel().reduce_options(last).graph_mode(common_models.BigValueGraphMode.NONE)
    elif spec.viz is Viz.TIMESERIES:
        p = timeseries.Panel().fill_opacity(10)
    elif spec.viz is Viz.TABLE:
        p = table.Panel()
    elif spec.viz is Viz.PIE:
        p = piechart.Panel().reduce_options(all_rows).pie_type(piechart_models.PieChartType.DONUT)
    elif spec.viz is Viz.BARCHART:
        p = barchart.Panel().x_field(spec.columns[0][0]).show_value(common_models.VisibilityMode.AUTO)
        if spec.stacked:
            p = p.stacking(common_models.StackingMode.NORMAL)
    else:
        p = bargauge.Panel().reduce_options(all_rows).orientation(common_models.VizOrientation.HORIZONTAL)
    if spec.promql:
        p = p.id(panel_id).title(spec.title).datasource(PROMETHEUS)
        for i, (expr, legend) in enumerate(spec.promql):
            q = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i))
            p = p.with_target(q.datasource(PROMETHEUS))
    else:
        p = p.id(panel_id).title(spec.title).datasource(DATASOURCE)
        p = p.with_target(SqlTarget(spec.sql, spec.format))
    p = p.span(spec.width).height(spec.height)
    if spec.description:
        p = p.description(spec.description)
    if spec.unit:
        p = p.unit(spec.unit)
    return p


def dashboard_builder(spec: DashboardSpec) -> dashboard.Dashboard:
    d = (
        dashboard.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(list(spec.tags))
        .time(spec.time_from, "now")
        .refresh(spec.refresh)
        .timezone("browser")
        .editable()
    )
    for variable in spec.variables:
        d = d.with_variable(_variable(variable))
    for panel_id, panel in enumerate(spec.panels, start=1):
        d = d.with_panel(_panel(panel, panel_id))
    return d


def to_json(spec: DashboardSpec) -> str:
    """The dashboard as Grafana JSON, stable (sorted keys) so the generated files diff cleanly."""
    model = dashboard_builder(spec).build()
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
