"""Prometheus metrics of the API: request counters and latency (an ASGI middleware), protocol publishes and
the downlinks they sent (counted by cloud/protocols/api.py), and gauges read from the database at scrape
time (quarantine rows by reason, ingest lag, rows per table).

Each app has its own registry, so several apps (tests) never collide. The database gauges are refreshed at
most once per `min_refresh_s`, so frequent scrapes cost the database one round of cheap queries.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ROW_ESTIMATE_RELATIONS = ("devices", "sessions", "samples", "device_events", "uplink_log", "quarantine")
# uplink_log has no index on stored_at: look only at the rows sent in the last hour (partition/chunk
# pruning on sent_at). No row stored in that window reports an infinite lag.
LAG_WINDOW = "1 hour"

QUARANTINE_SQL = "select reason, count(*) from quarantine group by reason"
LAG_SQL = (
    "select extract(epoch from now() - max(stored_at)), extract(epoch from max(stored_at)) "
    f"from uplink_log where sent_at > now() - interval '{LAG_WINDOW}'"
)
# The planner's estimate summed over a relation and its partitions or chunks (recursively).
ROWS_SQL = """
with recursive tree(root, relid) as (
    select c.oid, c.oid from pg_class c
    where c.relnamespace = 'public'::regnamespace and c.relname = any(%s)
    union all
    select t.root, i.inhrelid from tree t join pg_inherits i on i.inhparent = t.relid
)
select r.relname, sum(greatest(c.reltuples, 0))::bigint
from tree t join pg_class c on c.oid = t.relid join pg_class r on r.oid = t.root
group by r.relname
"""


class ApiMetrics:
    def __init__(self, min_refresh_s: float = 5.0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "microfleet_api_requests", "HTTP requests served", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "microfleet_api_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.quarantine = Gauge(
            "microfleet_quarantine_rows", "Messages held in quarantine, by reason", ["reason"], registry=r
        )
        self.ingest_lag = Gauge(
            "microfleet_ingest_lag_seconds",
            f"now - the newest uplink_log.stored_at (of messages sent in the last {LAG_WINDOW}; +Inf: none)",
            registry=r,
        )
        self.last_stored = Gauge(
            "microfleet_ingest_last_stored_timestamp_seconds", "Newest uplink_log.stored_at", registry=r
        )
        self.rows = Gauge(
            "microfleet_table_rows_estimate", "Planner row estimate per relation", ["relation"], registry=r
        )
        self.protocol_publishes = Counter(
            "microfleet_protocol_publishes",
            "Protocol publishes through the API, by outcome (sent, refused: hard limits, conflict, failed)",
            ["outcome"],
            registry=r,
        )
        self.protocol_messages = Counter(
            "microfleet_protocol_pushes",
            "Protocol downlinks to devices: sent (the broker took them) or refused",
            ["outcome"],
            registry=r,
        )
        self.db_errors = Counter(
            "microfleet_api_metrics_db_errors", "Scrapes whose database gauges could not be read", registry=r
        )
        self._min_refresh_s = min_refresh_s
        self._refreshed_at = -math.inf
        self._lock = asyncio.Lock()

    async def refresh(self, pool: AsyncConnectionPool) -> None:
        """Read the database gauges (at most once per min_refresh_s); a failure keeps the last values."""
        async with self._lock:
            if time.monotonic() - self._refreshed_at < self._min_refresh_s:
                return
            try:
                async with pool.connection(timeout=2.0) as conn, conn.transaction():
                    await self._read(conn)
                self._refreshed_at = time.monotonic()
            except (psycopg.Error, PoolTimeout) as exc:
                self.db_errors.inc()
                log.warning("metrics: cannot read the database gauges: %s", exc)

    async def _read(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("set local statement_timeout = '2s'")
        quarantine = await (await conn.execute(QUARANTINE_SQL)).fetchall()
        lag = await (await conn.execute(LAG_SQL)).fetchone()
        rows = await (await conn.execute(ROWS_SQL, (list(ROW_ESTIMATE_RELATIONS),))).fetchall()
        self.quarantine.clear()
        for reason, count in quarantine:
            self.quarantine.labels(reason=str(reason)).set(int(count))
        if lag is None or lag[0] is None:
            self.ingest_lag.set(math.inf)
        else:
            self.ingest_lag.set(max(0.0, float(lag[0])))
            self.last_stored.set(float(lag[1]))
        for relation, estimate in rows:
            self.rows.labels(relation=str(relation)).set(int(estimate))

    def protocol_published(self, outcome: str, sent: int = 0, refused: int = 0) -> None:
        """One protocol publish (POST /protocols) and the downlinks it sent."""
        self.protocol_publishes.labels(outcome=outcome).inc()
        if sent:
            self.protocol_messages.labels(outcome="sent").inc(sent)
        if refused:
            self.protocol_messages.labels(outcome="refused").inc(refused)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request by method, route template (not the raw path) and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = str(scope["method"])
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=route).observe(time.perf_counter() - started)
