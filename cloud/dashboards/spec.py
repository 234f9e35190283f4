"""What a dashboard is made of, before it becomes Grafana JSON: panels with their SQL and the shape of
the rows that SQL must return. Tests iterate over these specs and run every query for real."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Viz(StrEnum):
    """The visualisations we use (Grafana panel plugin ids)."""

    STAT = "stat"
    TIMESERIES = "timeseries"
    TABLE = "table"
    PIE = "piechart"
    BARCHART = "barchart"
    BARGAUGE = "bargauge"


class Col(StrEnum):
    """The kind of a result column, checked by the tests."""

    TIME = "time"  # timestamptz, or epoch seconds on plain PostgreSQL's $__timeGroup
    NUMBER = "number"
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class PanelSpec:
    title: str
    sql: str
    viz: Viz
    columns: tuple[tuple[str, Col], ...]
    description: str = ""
    unit: str = ""
    width: int = 8
    height: int = 8
    stacked: bool = False  # bar charts: stack the numeric columns of each row
    # a Prometheus panel (the services' /metrics, cloud/dashboards/prom.py): (PromQL, legend) per target;
    # `sql` and `columns` stay empty
    promql: tuple[tuple[str, str], ...] = ()

    @property
    def format(self) -> str:
        """Grafana's SQL result format: a time series when the first column is the time."""
        if self.columns and self.columns[0] == ("time", Col.TIME):
            return "time_series"
        return "table"


@dataclass(frozen=True, slots=True)
class VariableSpec:
    """A dashboard variable. Multi-value variables with 'All' use a custom all value (`'__all'`), so an
    empty fleet still yields valid SQL; panel SQL tests `'__all' IN ($var) OR col IN ($var)`. A single-value
    query variable (multi=False) keeps its query's order and starts on its first row; panel SQL reads it
    as `nullif('$var', '')` so that an empty list (nothing to pick yet) still yields valid SQL."""

    name: str
    label: str
    query: str = ""  # SQL for a query variable
    options: tuple[str, ...] = ()  # values for a custom variable
    multi: bool = True

    @property
    def include_all(self) -> bool:
        return self.multi


@dataclass(frozen=True, slots=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    panels: tuple[PanelSpec, ...]
    tags: tuple[str, ...] = ("microfleet",)
    time_from: str = "now-7d"
    refresh: str = "1m"
    variables: tuple[VariableSpec, ...] = field(default=())


ALL_VALUE = "'__all'"


def device_filter(model: str, firmware: str | None, protocol: str) -> str:
    """The SQL condition for the model, firmware and protocol variables over the given columns
    (firmware None: the panel applies the firmware variable itself, or not at all)."""
    on_firmware = f" AND ('__all' IN ($firmware) OR {firmware} IN ($firmware))" if firmware else ""
    return (
        f"('__all' IN ($model) OR {model} IN ($model)){on_firmware}"
        f" AND ('__all' IN ($protocol) OR {protocol} IN ($protocol))"
    )


def local_day(column: str) -> str:
    """The start of the local day (dashboard variable `$tz`) that contains `column`, as timestamptz."""
    return f"(date_trunc('day', {column} AT TIME ZONE '$tz') AT TIME ZONE '$tz')"
