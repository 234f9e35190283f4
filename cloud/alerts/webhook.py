"""The on-call webhook: POST each alert event as JSON to MICROFLEET_ALERT_WEBHOOK_URL, durably, with
retries, capped exponential backoff and full jitter.

Rows of `webhook_deliveries` are claimed by pushing `next_attempt_at` one lease ahead (a short
transaction, SKIP LOCKED), so the POST itself holds no database lock and a crashed worker's claim
expires; then the outcome is recorded: delivered, or the next attempt time and the error, or given up
after `webhook_max_attempts`. Any 2xx is success; 4xx other than 408/429 is permanent (the payload will
not become acceptable), everything else is retried.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg

from cloud.alerts.config import AlertConfig
from cloud.alerts.worker import OutboxWorker
from cloud.runtime.db import Database

log = logging.getLogger(__name__)
LEASE = timedelta(seconds=60)
BATCH = 50


def backoff_s(attempt: int, base_s: float, cap_s: float, rand: Callable[[], float] = random.random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))] (attempt counts from 1)."""
    return float(rand() * min(cap_s, base_s * 2.0 ** max(0, attempt - 1)))


def is_permanent(status: int) -> bool:
    return 400 <= status < 500 and status not in (408, 425, 429)


CLAIM = """
update webhook_deliveries w set next_attempt_at = %(lease)s, attempts = w.attempts + 1
from (select id from webhook_deliveries where delivered_at is null and gave_up_at is null
      and next_attempt_at <= %(now)s order by next_attempt_at, id limit %(limit)s for update skip locked) due
where w.id = due.id
returning w.id, w.attempts, w.payload::text
"""


class WebhookWorker(OutboxWorker):
    name = "webhook"
    autocommit = True

    def __init__(
        self,
        cfg: AlertConfig,
        clock: Callable[[], datetime],
        db: Database,
        client: httpx.Client | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(db, cfg.timer_s, cfg.webhook_timeout_s + 5)
        self.cfg, self.clock, self.rand = cfg, clock, rand
        self.http = client or httpx.Client(timeout=cfg.webhook_timeout_s)
        self.delivered = 0

    def join(self, timeout_s: float) -> list[str]:
        left = super().join(timeout_s)
        if not left:  # a POST still running keeps its client until the process ends
            self.http.close()
        return left

    def round(self, conn: psycopg.Connection[Any]) -> bool:
        now = self.clock()
        with conn.transaction():
            rows = conn.execute(CLAIM, {"now": now, "lease": now + LEASE, "limit": BATCH}).fetchall()
        for row_id, attempts, payload in rows:
            error = self._post(payload)
            done = self.clock()
            if error is None:
                conn.execute("update webhook_deliveries set delivered_at = %s where id = %s", (done, row_id))
                self.delivered += 1
            elif error.startswith("permanent") or attempts >= self.cfg.webhook_max_attempts:
                log.error("webhook delivery %s given up after %d attempts: %s", row_id, attempts, error)
                conn.execute(
                    "update webhook_deliveries set gave_up_at = %s, last_error = %s where id = %s",
                    (done, error, row_id),
                )
            else:
                delay = backoff_s(
                    attempts, self.cfg.webhook_backoff_base_s, self.cfg.webhook_backoff_cap_s, self.rand
                )
                conn.execute(
                    "update webhook_deliveries set next_attempt_at = %s, last_error = %s where id = %s",
                    (done + timedelta(seconds=delay), error, row_id),
                )
        return len(rows) == BATCH

    def _post(self, payload: str) -> str | None:
        try:
            r = self.http.post(
                self.cfg.webhook_url, content=payload, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            return f"transient: {type(exc).__name__}: {exc}"
        if r.is_success:
            return None
        kind = "permanent" if is_permanent(r.status_code) else "transient"
        return f"{kind}: HTTP {r.status_code} {r.text[:200]}"
