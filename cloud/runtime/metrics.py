"""A service's Prometheus metrics and health over HTTP: one owned server thread per process.

    registry = CollectorRegistry()                     # the service's own metrics (tests run several)
    server = MetricsServer("ingest-1", registry, port=9100, checks={"broker": connected.is_set,
                                                                    "database": database_check(db)})
    server.start()                                     # binds now: an OSError if the port is taken
    ...
    server.stop()                                      # shuts the server down and joins its thread

Routes (no token: expose the port on the internal network only, as the API's /metrics):
  GET /metrics   the registry in Prometheus' text format, plus microfleet_ready{check=...} (1 or 0)
  GET /healthz   liveness: 200 while the process serves; the body shows each readiness check
  GET /readyz    readiness: 200 when every check passes, else 503 (the body names the failing checks)

A check is a cheap callable (an Event's is_set) or a probe with a timeout (database_check); each check's
answer is kept for `cache_s`, so frequent scrapes and healthchecks cost one probe per interval. The
services update their counters per batch, never per message (see cloud/ingest/metrics.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

Check = Callable[[], bool]
PROBE_TIMEOUT_S = 2.0
CACHE_S = 2.0


def database_check(connection: Callable[..., Any], timeout_s: float = PROBE_TIMEOUT_S) -> Check:
    """A readiness check: `select 1` on a connection from `connection(timeout_s=...)` (Database.connection)."""

    def check() -> bool:
        try:
            with connection(timeout_s=timeout_s) as conn:
                conn.execute("select 1")
            return True
        except Exception as exc:  # noqa: BLE001 - any failure means: not ready
            log.debug("readiness: database probe failed: %s", exc)
            return False

    return check


def dsn_check(dsn: str, timeout_s: float = PROBE_TIMEOUT_S) -> Check:
    """A readiness check for a service without a pool of its own: connect to `dsn`, `select 1`."""
    import psycopg

    def check() -> bool:
        try:
            with psycopg.connect(dsn, connect_timeout=max(1, round(timeout_s))) as conn:
                conn.execute("select 1")
            return True
        except psycopg.Error as exc:
            log.debug("readiness: database probe failed: %s", exc)
            return False

    return check


class MetricsPortError(OSError):
    """The metrics address cannot be bound (the port is taken, or the host is not ours)."""


class Health:
    """Named readiness checks, each answer cached for cache_s (thread-safe)."""

    def __init__(self, checks: Mapping[str, Check], cache_s: float = CACHE_S) -> None:
        self.checks = dict(checks)
        self.cache_s = cache_s
        self._answers: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def results(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for name, check in self.checks.items():
            with self._lock:
                at, ok = self._answers.get(name, (-1e18, False))
            if time.monotonic() - at >= self.cache_s:
                ok = bool(check())
                with self._lock:
                    self._answers[name] = (time.monotonic(), ok)
            out[name] = ok
        return out


class _ReadyCollector(Collector):
    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "microfleet_ready", "1 if this readiness check passes, else 0", labels=["check"]
        )
        for name, ok in self.health.results().items():
            g.add_metric([name], 1.0 if ok else 0.0)
        yield g


class MetricsServer:
    """The HTTP server of one service's /metrics, /healthz and /readyz, on a thread it owns."""

    @classmethod
    def optional(
        cls,
        name: str,
        registry: CollectorRegistry,
        *,
        port: int | None,
        host: str,
        checks: Mapping[str, Check],
    ) -> MetricsServer | None:
        """The server of a service whose metrics port may be unset (None: no server, the default)."""
        return None if port is None else cls(name, registry, port=port, host=host, checks=checks)

    def __init__(
        self,
        name: str,
        registry: CollectorRegistry,
        *,
        port: int,
        host: str = "127.0.0.1",
        checks: Mapping[str, Check] | None = None,
        cache_s: float = CACHE_S,
    ) -> None:
        self.name = name
        self.registry = registry
        self.health = Health(checks or {}, cache_s)
        registry.register(_ReadyCollector(self.health))
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0: any free port)."""
        if self._server is None:
            raise RuntimeError("the metrics server is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._address[0]}:{self.port}"

    def start(self) -> None:
        """Bind and serve on a thread of our own; MetricsPortError if the address cannot be bound."""
        try:
            server = ThreadingHTTPServer(self._address, _handler(self))
        except OSError as exc:
            host, port = self._address
            raise MetricsPortError(
                f"{self.name}: cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
                "choose another MICROFLEET_METRICS_PORT (or unset it: no metrics server)"
            ) from exc
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"metrics-{self.name}",
            daemon=True,
        )
        self._thread.start()
        log.info("%s: metrics on %s/metrics (health: /healthz, /readyz)", self.name, self.url)

    def stop(self, timeout_s: float = 5.0) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join(timeout_s)
        self._thread = None

    def health_body(self) -> tuple[int, bytes, int]:
        """(readiness status, JSON body, liveness status) of the checks now."""
        results = self.health.results()
        ready = all(results.values())
        body = {
            "service": self.name,
            "live": True,
            "ready": ready,
            "checks": results,
            "failing": sorted(n for n, ok in results.items() if not ok),
        }
        return (200 if ready else 503), json.dumps(body).encode(), 200


def _handler(owner: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "microfleet-metrics"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    self._send(200, generate_latest(owner.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ready_status, body, live_status = owner.health_body()
                    self._send(ready_status if path == "/readyz" else live_status, body, "application/json")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")
            except Exception as exc:  # noqa: BLE001 - a scrape that fails must not stop the server
                log.warning("%s: %s failed: %s", owner.name, path, exc)
                self._send(500, f"{type(exc).__name__}: {exc}\n".encode(), "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s: " + format, owner.name, *args)

    return Handler
