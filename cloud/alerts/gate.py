"""The safety gate (C1): device profiles -> a blocking alert for ops and a retained SafetyGate for the device.

How profile changes reach the engine: POLLING `device_profiles.updated_at` (every `gate_poll_s`, with a
few seconds of overlap because transactions commit out of `updated_at` order). Chosen over LISTEN/NOTIFY
because it needs no trigger on a table the API owns, survives engine restarts without a missed
notification (a restart rescans from the start, and re-evaluation is idempotent), and a profile change
is rare and human-paced, so a 2 s delay is immaterial. Several engines may poll: each device is locked
(store.lock_devices) and the alert upsert and the gate's versioned upsert are idempotent.

The gate is computed from the profile itself (the blocking reasons), not from the alert: if an operator
resolves the C1 alert by hand, the device stays blocked until the PROFILE is cleared.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from cloud.alerts import effects, store
from cloud.alerts.config import AlertConfig
from cloud.alerts.device_params import load_params
from cloud.alerts.inputs import local_day
from cloud.alerts.params import RuleId
from cloud.alerts.profile import contraindication_reasons, evaluate_profile
from cloud.runtime.db import Database
from cloud.runtime.threads import Threads

log = logging.getLogger(__name__)
OVERLAP = timedelta(seconds=5)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BATCH = 500


def evaluate_profiles(
    conn: psycopg.Connection[Any], cfg: AlertConfig, rows: list[tuple[Any, ...]], now: datetime
) -> int:
    """Evaluate C1 for these device_profiles rows in one transaction; returns the gates changed."""
    changed = 0
    with conn.transaction():
        parsed = {r[0]: store.profile_of_row(r) for r in rows}
        store.lock_devices(conn, dict.fromkeys(parsed, now))
        opened = store.open_alerts(conn, parsed)
        params = load_params(conn, parsed)
        applied = []
        for dev in sorted(parsed):
            prof = parsed[dev].profile
            p = params[dev].c1
            c1_open = {k: v for k, v in opened.get(dev, {}).items() if k[0] is RuleId.C1}
            for d in evaluate_profile(prof, now, p, c1_open):
                a = store.apply_decision(conn, d, c1_open, now)
                if a is not None:
                    applied.append(a)
            block, _advise = contraindication_reasons(
                prof.contraindications, p, local_day(now, prof.tz_offset_min)
            )
            changed += effects.set_gate(conn, dev, block if p.enabled else [], now)
        effects.route(conn, cfg, applied, parsed, now)
    return changed


class GatePoller:
    """Polls on a thread of its own (owned: start, then signal_stop + join, or stop), with a connection
    from the service's Database per round."""

    def __init__(
        self, cfg: AlertConfig, clock: Callable[[], datetime], on_change: Callable[[], None], db: Database
    ) -> None:
        self.cfg, self.clock, self.on_change, self.db = cfg, clock, on_change, db
        self.watermark = EPOCH
        self._stop = threading.Event()
        self._threads = Threads("")
        self.rounds = 0

    def start(self) -> None:
        self._threads.spawn("alerts-gate", self._run)

    def stop(self) -> None:
        self.signal_stop()
        self.join(10)

    def signal_stop(self) -> None:
        """Ask the poller to stop after its poll (and wake it from its wait); `join` waits for it."""
        self._stop.set()

    def join(self, timeout_s: float) -> list[str]:
        return self._threads.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.db.connection(autocommit=True) as conn:
                    self.poll(conn)
            except psycopg.Error as exc:
                log.warning("profile poll failed (%s); retrying", exc)
            self._stop.wait(self.cfg.gate_poll_s)

    def poll(self, conn: psycopg.Connection[Any]) -> int:
        """Evaluate every profile changed since the watermark (minus the overlap); returns gates changed.
        Pages by the key (updated_at, device_id), so profiles sharing one updated_at (a bulk import, one
        transaction's now()) are never skipped at a page boundary."""
        changed, since, after = 0, self.watermark - OVERLAP, ""
        while True:
            rows = conn.execute(
                store.PROFILE_SELECT.replace("select ", "select p.updated_at, ", 1)
                + " where (p.updated_at, p.device_id) > (%s, %s) order by p.updated_at, p.device_id limit %s",
                (since, after, BATCH),
            ).fetchall()
            if rows:
                changed += evaluate_profiles(conn, self.cfg, [r[1:] for r in rows], self.clock())
                since, after = rows[-1][0], rows[-1][1]
                self.watermark = max(self.watermark, since)
            if len(rows) < BATCH:
                break
        self.rounds += 1
        if changed:
            self.on_change()
        return changed
