"""The alert feed's sending side (MICROFLEET_ALERT_FEED=committed; docs/decisions/alert-feed.md).

After a batch COMMITs, the writer hands the FeedSender the (topic, payload) pairs the alert engine
evaluates that the batch stored, with the batch's acknowledgement tokens, and goes on with the next batch.
The sender's thread publishes them as CommittedBatch messages (msgpack, at most FEED_MAX_BYTES each: the
broker refuses packets over 256 KiB) on topics.COMMITTED_FEED through ingest's one Publisher (the commit
marks' MQTT connection), waits for the PUBACKs, and only then acknowledges the originals to the broker.

- a PUBACK 0x00 is the only success. A refusal (>= 0x80), a timeout, no connection, and 0x10 "no matching
  subscribers" (no alert engine has subscribed the `alerts` group since the broker started: mosquitto
  would drop the message) are failures: the batch is published again after a backoff, its originals
  stay unacknowledged meanwhile.
- a crash between the COMMIT and the PUBACK leaves the originals unacknowledged: the broker re-sends them,
  ingest re-writes them (natural keys: nothing changes) and publishes them again. At least once to the
  engine, whose evaluation is idempotent (the same message twice is merged, never a second alert).
- the writer never waits for a PUBACK: it waits only when MAX_PENDING batches are held unpublished (the
  feed cannot be delivered at all), which is the back-pressure (the unacknowledged originals already bound
  the backlog through Receive Maximum).

    sender = FeedSender(publisher, consumer.ack, consumer_id="ingest-1")
    threads.spawn("ingest-feed", lambda: sender.loop(stop))
    sender.submit(fed_pairs(batch.accepted, result.refused), batch.acks, abort=abort_event)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloud.runtime.publisher import Outcome, Outgoing, Publisher
from contract import topics
from contract.codec import encode_feed
from contract.messages import CommittedBatch
from contract.topics import Uplink

log = logging.getLogger(__name__)

# What the alert engine's rules read (cloud.alerts.service uses this tuple): status heartbeats, OTA reports
# and sync requests are not evaluated, so they are left out of the feed.
EVALUATED: tuple[Uplink, ...] = (Uplink.SESSION_START, Uplink.SAMPLES, Uplink.SESSION_END, Uplink.EVENT)
_EVALUATED_NAMES = frozenset(k.value for k in EVALUATED)

# one CommittedBatch stays under the broker's max_packet_size (256 KiB, deploy/mosquitto/mosquitto.conf):
# a device message is at most 64 KiB (contract.codec.MAX_PAYLOAD_BYTES), so each chunk holds at least one
FEED_MAX_BYTES = 192 * 1024
_PAIR_OVERHEAD = 16  # msgpack framing of one (topic, payload) pair, generously
MAX_PENDING = 16  # batches committed and not yet fed before the writer waits
PUBACK_TIMEOUT_S = 10.0
RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)
LOG_EVERY_S = 10.0


def is_evaluated(topic: str) -> bool:
    """Is this an uplink kind the engine evaluates? (`mf/v1/<id>/up/<kind>`: the last level.)"""
    return topic.rpartition("/")[2] in _EVALUATED_NAMES


def fed_pairs(
    accepted: Iterable[tuple[str, bytes, object]], refused: Iterable[tuple[str, bytes]] = ()
) -> list[tuple[str, bytes]]:
    """The pairs of a committed batch the engine gets: the accepted messages the database did not refuse
    (those were quarantined), of the kinds it evaluates, in the order received."""
    out = [(t, p) for t, p, _ in accepted if is_evaluated(t)]
    refused = set(refused)
    return [pair for pair in out if pair not in refused] if refused else out


def chunks(
    pairs: Sequence[tuple[str, bytes]], max_bytes: int = FEED_MAX_BYTES
) -> list[list[tuple[str, bytes]]]:
    """Consecutive runs of `pairs` whose encoding stays under `max_bytes` (a pair alone may exceed it)."""
    out: list[list[tuple[str, bytes]]] = []
    run: list[tuple[str, bytes]] = []
    size = 0
    for pair in pairs:
        n = len(pair[0]) + len(pair[1]) + _PAIR_OVERHEAD
        if run and size + n > max_bytes:
            out.append(run)
            run, size = [], 0
        run.append(pair)
        size += n
    if run:
        out.append(run)
    return out


@dataclass
class _Held:
    """One committed batch: its feed messages not yet taken by the broker, and its originals' tokens."""

    payloads: list[bytes]
    acks: list[Any]
    messages: int
    attempts: int = 0
    not_before: float = 0.0
    last: list[Outcome] = field(default_factory=list)


class FeedSender:
    """Publishes committed batches to the alert engine and acknowledges their originals after the broker
    took every message of the batch (see the module docstring). Owned by IngestService: `loop` runs on
    its thread, `submit` is called by the writer thread."""

    def __init__(
        self,
        publisher: Publisher,
        ack: Callable[[list[Any]], int],
        *,
        consumer_id: str,
        max_pending: int = MAX_PENDING,
        timeout_s: float = PUBACK_TIMEOUT_S,
        retry_s: Sequence[float] = RETRY_S,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.publisher, self._ack = publisher, ack
        self.consumer_id = consumer_id
        self.max_pending, self.timeout_s, self.retry_s = max_pending, timeout_s, tuple(retry_s)
        self._mono = mono
        self._cond = threading.Condition()
        self._held: list[_Held] = []
        self._last_log = -LOG_EVERY_S
        # figures (read without the lock: ints)
        self.published = 0  # feed messages the broker took (0x00)
        self.fed = 0  # evaluated messages in them
        self.failed = 0  # feed publishes that failed (sent again)
        self.batches = 0  # committed batches whose originals were acknowledged

    def encode(self, pairs: Sequence[tuple[str, bytes]]) -> list[bytes]:
        return [
            encode_feed(CommittedBatch(consumer=self.consumer_id, messages=tuple(run)))
            for run in chunks(pairs)
        ]

    def submit(self, pairs: Sequence[tuple[str, bytes]], acks: list[Any], *, abort: threading.Event) -> bool:
        """Hand over a committed batch. A batch with nothing to feed is acknowledged at once. Waits only
        while max_pending batches are held; False if `abort` was set meanwhile (nothing acknowledged)."""
        if not pairs:
            self._ack(acks)
            with self._cond:
                self.batches += 1
            return True
        held = _Held(self.encode(pairs), acks, len(pairs))
        with self._cond:
            while len(self._held) >= self.max_pending:
                if abort.is_set():
                    return False
                self._cond.wait(0.1)
            self._held.append(held)
            self._cond.notify_all()
        return True

    def pending(self) -> int:
        """Batches committed and not yet fed."""
        with self._cond:
            return len(self._held)

    def wait_empty(self, timeout_s: float) -> bool:
        deadline = self._mono() + timeout_s
        with self._cond:
            while self._held:
                left = deadline - self._mono()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def loop(self, stop: threading.Event) -> None:
        """Publish what is held until `stop`; what is then unpublished stays unacknowledged (the broker
        re-sends the originals to the next session)."""
        while not stop.is_set():
            with self._cond:
                now = self._mono()
                due = [h for h in self._held if h.not_before <= now]
                if not due:
                    nxt = min((h.not_before for h in self._held), default=now + 0.5)
                    self._cond.wait(max(0.01, min(0.5, nxt - now)))
                    continue
            self._round(due)

    def _round(self, due: list[_Held]) -> None:
        messages = [Outgoing(topics.COMMITTED_FEED, p) for h in due for p in h.payloads]
        outcomes = self.publisher.publish_many(messages, self.timeout_s)
        done: list[_Held] = []
        acks: list[Any] = []
        i = 0
        for h in due:
            mine = outcomes[i : i + len(h.payloads)]
            i += len(h.payloads)
            taken = sum(1 for o in mine if o.matched)
            self.published += taken
            if taken == len(mine):
                done.append(h)
                acks.extend(h.acks)
                self.fed += h.messages
                continue
            # keep what the broker did not take, publish it again later (the rest is not re-sent)
            h.payloads = [p for p, o in zip(h.payloads, mine, strict=True) if not o.matched]
            h.last = [o for o in mine if not o.matched]
            self.failed += len(h.payloads)
            h.not_before = self._mono() + self.retry_s[min(h.attempts, len(self.retry_s) - 1)]
            h.attempts += 1
            self._log_failure(h)
        if acks:
            self._ack(acks)
        if done:
            with self._cond:
                gone = {id(h) for h in done}
                self._held = [h for h in self._held if id(h) not in gone]
                self.batches += len(done)
                self._cond.notify_all()

    def _log_failure(self, h: _Held) -> None:
        now = self._mono()
        if now - self._last_log < LOG_EVERY_S:
            return
        self._last_log = now
        first = h.last[0] if h.last else "?"
        hint = " (no alert engine subscribed: start `microfleet alerts run`)" if "0x10" in str(first) else ""
        log.warning(
            "alert feed: %d messages of a committed batch not taken by the broker (%s)%s; its originals are "
            "not acknowledged, published again in %.1f s (attempt %d)",
            h.messages,
            first,
            hint,
            max(0.0, h.not_before - now),
            h.attempts,
        )
