"""Grafana's PostgreSQL query expansion, reproduced so that tests can run each panel's SQL as Grafana
would send it: template variables first (frontend), then the `$__` macros (the datasource backend,
pkg/tsdb/grafana-postgresql-datasource/macros.go). Pure functions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["All", "MacroError", "VariableValue", "expand", "parse_interval"]


class MacroError(ValueError):
    """A macro or variable that Grafana would refuse: the message names it."""


@dataclass(frozen=True, slots=True)
class All:
    """The 'All' selection of a multi-value variable with a custom all value (inserted unquoted)."""

    value: str


# A single value (a non-multi variable: inserted as is, quotes doubled), several values (a multi-value
# variable: each single-quoted, comma separated), or All.
VariableValue = str | tuple[str, ...] | All

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_INTERVAL = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)$")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_MACRO = re.compile(r"\$__(\w+)\(([^)]*)\)")


def parse_interval(text: str) -> timedelta:
    """'5m', '1h', '1d', '30s' (gtime.ParseInterval) -> timedelta."""
    m = _INTERVAL.match(text.strip().strip("'\""))
    if m is None:
        raise MacroError(f"not a Grafana interval: {text!r} (use e.g. '30s', '5m', '1h', '1d')")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _format(name: str, value: VariableValue) -> str:
    if isinstance(value, All):
        return value.value
    if isinstance(value, tuple):
        if not value:
            raise MacroError(f"variable ${name} has no value selected")
        return ",".join(_quote(v) for v in value)
    return value.replace("'", "''")


def _rfc3339(t: datetime) -> str:
    if t.tzinfo is None:
        raise MacroError("time range bounds must be aware datetimes")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") + _fraction(t) + "Z"


def _fraction(t: datetime) -> str:
    # Go's RFC3339Nano drops trailing zeros of the fraction, and the fraction entirely when it is zero.
    return ("." + f"{t.microsecond:06d}".rstrip("0")) if t.microsecond else ""


def _seconds(td: timedelta) -> str:
    s = td.total_seconds()
    return str(int(s)) if s == int(s) else repr(s)


def _macro(name: str, args: list[str], *, start: datetime, end: datetime, timescaledb: bool) -> str:
    def arg(i: int) -> str:
        if len(args) <= i or not args[i]:
            raise MacroError(f"macro $__{name} needs at least {i + 1} argument(s), got {args}")
        return args[i]

    if name == "time":
        return f'{arg(0)} AS "time"'
    if name == "timeEpoch":
        return f'extract(epoch from {arg(0)}) as "time"'
    if name == "timeFilter":
        return f"{arg(0)} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'"
    if name == "timeFrom":
        return f"'{_rfc3339(start)}'"
    if name == "timeTo":
        return f"'{_rfc3339(end)}'"
    if name in ("timeGroup", "timeGroupAlias"):
        seconds = _seconds(parse_interval(arg(1)))
        if timescaledb:
            expr = f"time_bucket('{seconds}s',{arg(0)})"
        else:
            expr = f"floor(extract(epoch from {arg(0)})/{seconds})*{seconds}"
        return expr + (' AS "time"' if name == "timeGroupAlias" else "")
    if name == "unixEpochFilter":
        return f"{arg(0)} >= {int(start.timestamp())} AND {arg(0)} <= {int(end.timestamp())}"
    raise MacroError(f"unknown macro $__{name}")


def expand(
    sql: str,
    *,
    start: datetime,
    end: datetime,
    variables: Mapping[str, VariableValue],
    interval: timedelta = timedelta(minutes=1),
    timescaledb: bool = False,
) -> str:
    """The SQL Grafana sends to PostgreSQL for a panel over [start, end] with these variable values.

    `timescaledb` mirrors the datasource's TimescaleDB switch: `$__timeGroup` becomes `time_bucket`."""
    text = sql.replace("$__interval_ms", str(int(interval.total_seconds() * 1000)))
    text = text.replace("$__interval", f"{_seconds(interval)}s")

    def variable(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name.startswith("__"):
            return m.group(0)
        if name not in variables:
            raise MacroError(f"variable ${name} is used but has no value")
        return _format(name, variables[name])

    text = _VARIABLE.sub(variable, text)

    def macro(m: re.Match[str]) -> str:
        args = [a.strip() for a in m.group(2).split(",")] if m.group(2).strip() else []
        return _macro(m.group(1), args, start=start, end=end, timescaledb=timescaledb)

    text = _MACRO.sub(macro, text)
    if "$__" in text:
        raise MacroError(f"unexpanded Grafana macro left in: {text[text.index('$__') :][:40]!r}")
    return text
