"""One owner of the alert engine's database connections: the safety-gate poller and the webhook worker
check connections out of the service's `Database` pool like every other worker (they used to open one
each of their own, outside the pool's limits and health checks). Seen from PostgreSQL: while the
engine runs its gate and webhook, every backend it has open is one of its pool's."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cloud.alerts.service import AlertService
from cloud.db.migrate import migrate
from tests.cloud.test_alerts_engine_support import FakeDevice, engine_config, query, wait_for
from tests.support.services import Mosquitto

pytestmark = pytest.mark.slow
APP = "alerts-db-owner"


class Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_gate_poller_and_webhook_use_the_services_pool(broker: Mosquitto, database_url: str) -> None:
    migrate(database_url)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dsn = database_url + f"?application_name={APP}"  # every connection of the engine carries it
    cfg = engine_config(broker.url, dsn, webhook_url=f"http://127.0.0.1:{server.server_address[1]}/hook")
    query(database_url, "insert into device_profiles (device_id, epilepsy) values ('owner-1', true)")
    device = FakeDevice(broker.url, "owner-1", lambda: datetime.now(UTC))
    try:
        with AlertService(cfg) as svc:
            device.wait(lambda d: bool(d.gates) and d.gates[-1].blocked)  # the gate poller ran
            wait_for(  # the C1 alert went to the webhook
                lambda: (
                    query(
                        database_url, "select count(*) from webhook_deliveries where delivered_at is not null"
                    )
                    == [(1,)]
                ),
                what="webhook delivered",
            )

            def backends() -> int:
                rows = query(
                    database_url, "select count(*) from pg_stat_activity where application_name = %s", APP
                )
                return int(rows[0][0])

            # the pool grows and shrinks on its own: its size and the backends agree once it settles
            seen: list[tuple[int, int]] = []

            def only_pooled() -> bool:
                seen.append((backends(), svc.db.pool.get_stats()["pool_size"]))
                return seen[-1][0] == seen[-1][1]

            try:
                wait_for(only_pooled, 10, "every backend of the engine in its pool")
            except AssertionError:
                raise AssertionError(f"(backends, pool size) last seen: {seen[-3:]}") from None
    finally:
        device.close()
        server.shutdown()
        server.server_close()
