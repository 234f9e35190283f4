"""Device delivery: notices (QoS 1, not retained) and safety gates (QoS 1, retained) from their outboxes.

The worker wakes when the engine commits (`wake()`) or every `timer_s` (held notices whose quiet hours
ended). It claims due rows with `FOR UPDATE SKIP LOCKED` (so several engines never send the same row at
once), publishes them, waits for the broker's PUBACKs and only then marks them sent, in the same
transaction. A crash in between resends on the next round: at least once, and the agent dedups by
`notice_id` (a gate is a retained desired state: resending it is harmless by nature).

The PUBACK's reason code decides (cloud.runtime.publisher): a refusal (>= 0x80, e.g. 0x87 when the ACL
does not let this identity publish a gate), a timeout or no connection is a failure, logged and tried
again next round, never counted as sent. 0x10 "no matching subscribers" stores a retained gate (the
device gets it when it subscribes: sent) but drops a notice (nobody got it: tried again later).

A notice the broker answered but did not route (0x10: the device is offline, or a refusal) is tried
again after a doubling delay, per notice: `timer_s`, 2x, 4x ... capped at NOTICE_RETRY_CAP_S (its
`release_at` moves; `attempts` counts the tries), until it is delivered or expires. A notice that got no
answer (no connection, timeout) is tried again next round: the broker never saw it.

Gates are desired state the broker keeps (retained), and a broker that crashes loses what it took since
its last save (autosave_interval, 5 s). So every time the publisher connects (`resend_gates`, from its
on_up), every gate is marked unpublished and sent again: a device gets its gate back whatever the broker
lost (a resend is harmless: the device gets the retained gate again at every subscribe anyway).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg

from cloud.alerts.config import AlertConfig
from cloud.alerts.worker import OutboxWorker
from cloud.runtime.db import Database
from cloud.runtime.publisher import Outgoing, Publisher
from contract import topics
from contract.codec import encode
from contract.messages import Notice, SafetyGate, Severity

__all__ = ["BATCH", "PUBACK_TIMEOUT_S", "DeliveryWorker", "Publisher"]
log = logging.getLogger(__name__)
BATCH = 200
PUBACK_TIMEOUT_S = 10.0
NOTICE_RETRY_CAP_S = 60.0


def retry_delay_s(tries: int, base_s: float, cap_s: float = NOTICE_RETRY_CAP_S) -> float:
    """The wait before trying a notice again after its `tries`-th undelivered try (pure): base, 2x base,
    4x base ... at most cap."""
    return min(cap_s, base_s * 2.0 ** min(max(0, tries - 1), 30))


DUE_NOTICES = """
-- the most severe first: a critical notice never waits behind a storm of warnings
select id, notice_id, device_id, severity::text, rule_id, text, expires_at, attempts from notice_outbox
where sent_at is null and release_at <= %(now)s and (expires_at is null or expires_at > %(now)s)
order by severity desc, release_at, id limit %(limit)s for update skip locked
"""
DUE_GATES = """
select device_id, blocked, reasons, text, version from safety_gates
where published_version < version order by device_id limit %(limit)s for update skip locked
"""


class DeliveryWorker(OutboxWorker):
    name = "delivery"

    def __init__(
        self, cfg: AlertConfig, publisher: Publisher, clock: Callable[[], datetime], db: Database
    ) -> None:
        super().__init__(db, cfg.timer_s, PUBACK_TIMEOUT_S + 5)
        self.cfg, self.publisher, self.clock = cfg, publisher, clock
        self.sent_notices = 0
        self.sent_gates = 0
        self.failed_notices = 0
        self.failed_gates = 0
        self._resend_gates = threading.Event()

    def resend_gates(self) -> None:
        """Send every gate again at the next round (safe from any thread: the publisher's on_up calls it)."""
        self._resend_gates.set()
        self.wake()

    def round(self, conn: psycopg.Connection[Any]) -> bool:
        """One claim-publish-mark round; True if a full batch was found (more may be due)."""
        now = self.clock()
        with conn.transaction():
            rows = conn.execute(DUE_NOTICES, {"now": now, "limit": BATCH}).fetchall()
            msgs = [
                Outgoing(
                    topics.downlink(dev, topics.Downlink.NOTICE),
                    encode(
                        Notice(
                            device_id=dev,
                            ts=now,
                            notice_id=nid,
                            severity=Severity(sev),
                            text=text,
                            rule_id=rule,
                            expires_at=exp,
                        )
                    ),
                    False,
                )
                for _id, nid, dev, sev, rule, text, exp, _tries in rows
            ]
            outcomes = self.publisher.publish_many(msgs, PUBACK_TIMEOUT_S)
            # a notice counts as sent when the broker routed it to the device's subscription (0x00)
            done = [r[0] for r, o in zip(rows, outcomes, strict=True) if o.matched]
            if done:
                conn.execute(
                    "update notice_outbox set sent_at = %s, attempts = attempts + 1 where id = any(%s)",
                    (now, done),
                )
            failed = [(r, o) for r, o in zip(rows, outcomes, strict=True) if not o.matched]
            if failed:
                # answered but not routed (0x10, a refusal): back off; no answer: next round
                later = [
                    None
                    if o.reason is None
                    else now + timedelta(seconds=retry_delay_s(r[7] + 1, self.cfg.timer_s))
                    for r, o in failed
                ]
                conn.execute(
                    "update notice_outbox n set attempts = n.attempts + 1, release_at = coalesce(u.at, n.release_at) "
                    "from unnest(%s::bigint[], %s::timestamptz[]) as u(id, at) where n.id = u.id",
                    ([r[0] for r, _ in failed], later),
                )
                why = failed[0][1]
                log.info("%d notices not delivered (%s); tried again later", len(failed), why)
            self.sent_notices += len(done)
            self.failed_notices += len(failed)
        if self._resend_gates.is_set():
            self._resend_gates.clear()
            try:
                with conn.transaction():
                    n = conn.execute(
                        "update safety_gates set published_version = version - 1 "
                        "where published_version >= version"
                    ).rowcount
            except psycopg.Error:
                self._resend_gates.set()  # tried again next round
                raise
            if n:
                log.info("publisher (re)connected: %d safety gates sent again", n)
        with conn.transaction():
            gates = conn.execute(DUE_GATES, {"limit": BATCH}).fetchall()
            gmsgs = [
                Outgoing(
                    topics.downlink(dev, topics.Downlink.GATE),
                    encode(
                        SafetyGate(device_id=dev, ts=now, blocked=blocked, reasons=tuple(reasons), text=text)
                    ),
                    True,
                )
                for dev, blocked, reasons, text, _v in gates
            ]
            # a gate is retained desired state: taken by the broker (0x00 or 0x10) is enough
            gok = [o.accepted for o in self.publisher.publish_many(gmsgs, PUBACK_TIMEOUT_S)]
            for (dev, *_rest, version), good in zip(gates, gok, strict=True):
                if good:
                    conn.execute(
                        "update safety_gates set published_version = %s where device_id = %s", (version, dev)
                    )
                    self.sent_gates += 1
                else:
                    self.failed_gates += 1
        return (len(rows) == BATCH and len(done) == len(rows)) or (len(gates) == BATCH and all(gok))
