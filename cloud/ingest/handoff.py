"""The thread-safe hand-over between paho's network thread and the writer thread.

The network thread `offer`s each message: it is decoded into the (pure) Batcher under a lock, never
waiting for the writer. The writer thread `take`s the pending batch once it is due (size or age).
While the writer is busy or retrying, messages accumulate into the next batch; the backlog is bounded
by the consumer's MQTT Receive Maximum (the broker sends no more until we ack), so this is the bounded
queue without a blocking put in paho's callback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Generic, TypeVar

from cloud.ingest.batcher import Batch, Batcher
from contract.errors import Reason

log = logging.getLogger(__name__)
T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Handoff(Generic[T]):
    def __init__(
        self,
        batcher: Batcher[T],
        *,
        now: Callable[[], datetime] = utc_now,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._batcher = batcher
        self._now = now
        self._mono = mono
        self._cond = threading.Condition()
        self.rejected: dict[Reason, int] = {}

    def offer(self, topic: str, payload: bytes, token: T) -> None:
        with self._cond:
            try:
                reason = self._batcher.add(topic, payload, token, now=self._now(), mono=self._mono())
            except Exception as exc:  # a bug must not stop the consumer: keep the bytes for a replay
                log.exception("unexpected error decoding a message on %s; quarantined", topic)
                self._batcher.add_quarantine(topic, payload, Reason.SCHEMA, f"ingest error: {exc!r}")
                reason = Reason.SCHEMA
            if reason is not None:
                self.rejected[reason] = self.rejected.get(reason, 0) + 1
                log.info("quarantined a message on %s: %s", topic, reason.value)
            if self._batcher.due(self._mono()) or len(self._batcher) == 1:
                self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._batcher)

    def take(self, stop: threading.Event, timeout: float = 0.5) -> Batch[T] | None:
        """Wait for a due batch (or, once `stop` is set, whatever is pending). None on timeout/empty."""
        end = self._mono() + timeout
        with self._cond:
            while True:
                mono = self._mono()
                if self._batcher.due(mono) or (stop.is_set() and len(self._batcher)):
                    return self._batcher.take()
                if stop.is_set() or mono >= end:
                    return None
                deadline = self._batcher.deadline()
                wait_until = end if deadline is None else min(end, deadline)
                self._cond.wait(max(0.0, wait_until - mono))
