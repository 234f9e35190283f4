"""The sweep: open alerts of the sliding rules (O5, T2, T4) re-evaluated as days pass, with no session.

A rolling window ends on the user's local "today", so a rest week should resolve the streak alert even
if the device is not used again. Session ends cannot do that (there are none), so the engine's timer
calls `sweep` every `sweep_s`: it claims devices with such an open alert that were not swept within the
interval (`FOR UPDATE SKIP LOCKED` on alert_devices: several engines share the work, and a device the
engine is folding right now is skipped, not waited for), loads their history with the engine's own
reads (bulk.load), asks the pure `evaluate_sliding` for clears and writes them with the engine's own
writes (bulk.write: resolution, audit trail, webhook). One transaction per page of devices.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cloud.alerts import bulk
from cloud.alerts.config import AlertConfig
from cloud.alerts.engine import HISTORY_DAYS
from cloud.alerts.history import SLIDING_RULES, evaluate_sliding
from cloud.alerts.inputs import DeviceHistory, DeviceProfile
from cloud.alerts.store import Applied, Conn

PAGE = 100  # devices per transaction: their locks are held while their 60 days of history are read
DUE = """
select d.device_id from alert_devices d
where d.device_id in (select a.device_id from alerts a where a.state <> 'resolved' and a.rule_id = any(%(rules)s))
  and (d.swept_at is null or d.swept_at <= %(due)s)
order by d.device_id limit %(limit)s
for update of d skip locked
"""


def sweep_page(conn: Conn, cfg: AlertConfig, now: datetime, limit: int = PAGE) -> tuple[int, list[Applied]]:
    """Sweep one page of due devices in one transaction; returns (devices swept, clears applied)."""
    with conn.transaction():
        due = now - timedelta(seconds=cfg.sweep_s)
        rules = [r.value for r in SLIDING_RULES]
        ids = [r[0] for r in conn.execute(DUE, {"rules": rules, "due": due, "limit": limit}).fetchall()]
        if not ids:
            return 0, []
        got = bulk.load(conn, dict.fromkeys(ids, now), [], ids, now - timedelta(days=HISTORY_DAYS))
        pending = bulk.Pending()
        for dev in ids:
            row = got.profiles.get(dev)
            profile = row.profile if row else DeviceProfile(device_id=dev)
            opened = got.opened.get(dev, {})
            history = DeviceHistory.of(got.first_seen[dev], got.past.get(dev, []), opened)
            pending.decisions += evaluate_sliding(history, profile, got.params[dev], now)
            pending.before[dev] = dict(opened)
        applied, _notices = bulk.write(conn, cfg, pending, got.profiles, now)
        conn.execute("update alert_devices set swept_at = %s where device_id = any(%s)", (now, ids))
    return len(ids), applied


def sweep(conn: Conn, cfg: AlertConfig, now: datetime, page: int = PAGE) -> tuple[int, list[Applied]]:
    """Every due device, page by page; returns (devices swept, clears applied)."""
    devices, applied = 0, list[Applied]()
    while True:
        n, a = sweep_page(conn, cfg, now, page)
        devices, applied = devices + n, applied + a
        if n < page:
            return devices, applied
