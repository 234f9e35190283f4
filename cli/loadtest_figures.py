"""The figures of `microfleet loadtest` read from the cloud's database (uplink_log, samples, alerts):
loss by sequence number, what was stored, latency percentiles; pure helpers beside them. Also used by
`microfleet compose-loadtest`, bench/ and the simulator tests (through cli.loadtest, which re-exports them).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg


LATENCY_KEYS = ("p50", "p95", "p99", "max")


def latency_figures(values: Sequence[float] | None, n: int) -> dict[str, float | None]:
    """Pure: p50/p95/p99/max in ms (rounded) and the count; all None when no message was measured."""
    if not n or values is None:
        return {**dict.fromkeys(LATENCY_KEYS, None), "n": 0}
    return {**{k: round(float(v), 1) for k, v in zip(LATENCY_KEYS, values, strict=True)}, "n": n}


def latency_text(figures: dict[str, float | None]) -> str:
    """Pure: the table's latency cell; a figure from nothing says so."""
    if not figures.get("n"):
        return "n/a (no samples)"
    return " / ".join(str(figures[k]) for k in LATENCY_KEYS) + f" ({figures['n']:.0f} messages)"


def _first_seqs(first: dict[str, int]) -> tuple[list[str], list[int]]:
    return list(first), list(first.values())


def run_latency(conn: psycopg.Connection[Any], first: dict[str, int]) -> dict[str, float | None]:
    """Latency of this run's data messages (seq >= the device's first seq of the run, status excluded)."""
    row = conn.execute(
        "select percentile_cont(array[0.5, 0.95, 0.99]) within group (order by ms), max(ms), count(*) "
        "from (select extract(epoch from u.stored_at - u.sent_at) * 1000 as ms from uplink_log u "
        "join unnest(%s::text[], %s::bigint[]) as f(device_id, first_seq) using (device_id) "
        "where u.kind <> 'status' and u.seq >= f.first_seq) x",
        _first_seqs(first),
    ).fetchone()
    if row is None or row[0] is None:
        return latency_figures(None, 0)
    return latency_figures((*row[0], row[1]), int(row[2]))


def latency_since(conn: psycopg.Connection[Any], prefix: str, since: datetime) -> dict[str, float | None]:
    """Latency of the prefix's data messages sent since `since` (device time; compose-loadtest)."""
    row = conn.execute(
        "select percentile_cont(array[0.5, 0.95, 0.99]) within group (order by ms), max(ms), count(*) "
        "from (select extract(epoch from stored_at - sent_at) * 1000 as ms from uplink_log "
        "where device_id like %s and kind <> 'status' and sent_at >= %s) x",
        (prefix + "-%", since),
    ).fetchone()
    if row is None or row[0] is None:
        return latency_figures(None, 0)
    return latency_figures((*row[0], row[1]), int(row[2]))


def stored_data_messages(conn: psycopg.Connection[Any], first: dict[str, int]) -> int:
    """Distinct (device, seq) data messages of this run in uplink_log: what `sent_messages` counts."""
    row = conn.execute(
        "select count(distinct (u.device_id, u.seq)) from uplink_log u "
        "join unnest(%s::text[], %s::bigint[]) as f(device_id, first_seq) using (device_id) "
        "where u.kind <> 'status' and u.seq >= f.first_seq",
        _first_seqs(first),
    ).fetchone()
    return int(row[0]) if row else 0


def stored_seqs(conn: psycopg.Connection[Any], prefix: str) -> tuple[dict[str, set[int]], int]:
    """Distinct seqs per device in uplink_log, and how many rows are extra copies of a seq."""
    seqs: dict[str, set[int]] = {}
    rows = 0
    for dev, seq in conn.execute(
        "select device_id, seq from uplink_log where device_id like %s", (prefix + "-%",)
    ):
        seqs.setdefault(dev, set()).add(seq)
        rows += 1
    return seqs, rows - sum(len(s) for s in seqs.values())


def loss_by_device(
    expected_next: dict[str, int], stored: dict[str, set[int]], first: dict[str, int] | None = None
) -> dict[str, int]:
    """Pure: per device, how many of seqs first..next-1 (first: 0 unless given) were not stored."""
    out = {}
    for dev, nxt in expected_next.items():
        lo = (first or {}).get(dev, 0)
        missing = nxt - lo - len(stored.get(dev, set()) & set(range(lo, nxt)))
        if missing:
            out[dev] = missing
    return out


def missing_alerts(expected: dict[str, frozenset[str]], raised: dict[str, set[str]]) -> list[str]:
    """Pure: `device:rule` for every expected rule the device did not raise."""
    return sorted(f"{d}:{r}" for d, rules in expected.items() for r in rules - raised.get(d, set()))


def raised_alerts(conn: psycopg.Connection[Any], prefix: str) -> dict[str, set[str]]:
    if conn.execute("select to_regclass('alerts')").fetchone() == (None,):
        return {}
    out: dict[str, set[str]] = {}
    for dev, rule in conn.execute(
        "select distinct device_id, rule_id from alerts where device_id like %s", (prefix + "-%",)
    ):
        out.setdefault(dev, set()).add(rule)
    return out
