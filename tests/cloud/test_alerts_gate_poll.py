"""The profile poll of the safety gate on PostgreSQL: no profile is skipped at a page boundary, and a
second poll changes nothing (re-evaluation is idempotent)."""

from __future__ import annotations

from datetime import UTC, datetime

from cloud.alerts import gate
from cloud.alerts.gate import GatePoller
from cloud.db.migrate import migrate
from cloud.runtime.db import Database
from tests.cloud.test_alerts_engine_support import engine_config


def test_profiles_sharing_one_updated_at_are_all_evaluated(database_url: str) -> None:
    migrate(database_url)
    n = 2 * gate.BATCH + 1  # three pages, every row with the same updated_at (one transaction's now())
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    with (
        Database(database_url) as db,
        db.connection(autocommit=True) as conn,
    ):
        poller = GatePoller(engine_config("mqtt://127.0.0.1:1", database_url), lambda: now, lambda: None, db)
        conn.execute(
            "insert into device_profiles (device_id, pregnancy) "
            "select format('bulk-%%s', lpad(i::text, 5, '0')), i %% 2 = 0 from generate_series(1, %s) i",
            (n,),
        )
        stamps = conn.execute("select count(distinct updated_at) from device_profiles").fetchone()
        assert stamps == (1,)
        poller.poll(conn)
        gates = conn.execute(
            "select count(*), count(*) filter (where blocked) from safety_gates where device_id like 'bulk-%%'"
        ).fetchone()
        alerts = conn.execute("select count(*) from alerts where rule_id = 'C1'").fetchone()
        assert gates == (n, n // 2)  # every profile has its gate, the pregnant half blocked
        assert alerts == (n // 2,)
        assert poller.poll(conn) == 0  # the overlap re-reads the rows: nothing changes twice
        assert conn.execute("select count(*) from alerts where rule_id = 'C1'").fetchone() == (n // 2,)
