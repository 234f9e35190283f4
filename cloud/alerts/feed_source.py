"""The alert engine's source in MICROFLEET_ALERT_FEED=committed mode (docs/decisions/alert-feed.md).

Ingest publishes one CommittedBatch per committed batch on topics.COMMITTED_FEED. This source reads those
(the `alerts` shared group on mosquitto; on the NATS tier the `alerts-feed` JetStream durable on
`$MQTT.msgs.mf.v1._cloud.committed`), unpacks each and calls the engine's own `on_message(topic, payload,
token)` for every message in it, as the uplinks source would: the engine's logic is untouched. The outer
message is acknowledged when every one of its inner tokens was (`ack`), i.e. after the engine committed
all of them. A feed message that is not a CommittedBatch (a bug: only svc-ingest may publish there) is
logged, counted in `refused` and handed to the engine as it is: the engine refuses it (its topic is no
uplink's), records it in alert_refused with its bytes and acknowledges it: it never stops the engine.

Only the outer messages count against the broker's window, so the source's Receive Maximum (fetch bound
on NATS) is in feed messages: FEED_WINDOW of them, each up to a batch of ingest's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from cloud.ingest.source import OnMessage, Source, UplinkSourceSpec
from cloud.runtime.consumer import Consumer
from contract import topics
from contract.codec import decode_feed
from contract.errors import ContractError

log = logging.getLogger(__name__)

FEED_WINDOW = 32  # feed messages held unacknowledged (each one committed batch of ingest)
FEED_DURABLE_SUFFIX = "-feed"


class _Outer:
    """One feed message: its token at the broker, and how many inner messages are not acked yet."""

    __slots__ = ("remaining", "token")

    def __init__(self, token: Any, remaining: int) -> None:
        self.token, self.remaining = token, remaining


def feed_filters(group: str) -> tuple[list[str], list[str]]:
    """(the group's shared filter on the feed, the uplink filters a session from `uplinks` mode may hold)."""
    every = [topics.uplink_filter(), *(topics.uplink_filter(k) for k in topics.Uplink)]
    return [topics.shared(group, topics.COMMITTED_FEED)], [topics.shared(group, f) for f in every]


def feed_subject() -> str:
    """The feed's subject in the MQTT gateway's `$MQTT_msgs` stream."""
    from cloud.runtime.jetstream import MSGS_PREFIX

    return MSGS_PREFIX + topics.COMMITTED_FEED.replace("/", ".")


class FeedSource:
    """A Source (cloud.ingest.source) of the messages in the alert feed; see the module docstring."""

    def __init__(
        self,
        spec: UplinkSourceSpec,
        on_message: OnMessage,
        *,
        window: int = FEED_WINDOW,
    ) -> None:
        self._on_message = on_message
        self._lock = threading.Lock()
        self.batches = 0  # feed messages received
        self.refused = 0  # feed messages that were not a CommittedBatch
        self.inner: Source
        if spec.nats_url:
            from cloud.runtime.jetstream import DurableSpec, JetStreamSource

            name = spec.group + FEED_DURABLE_SUFFIX
            self.inner = JetStreamSource(
                urls=spec.nats_url,
                durable=name,
                name=spec.consumer_id,
                on_message=self._unpack,
                spec=DurableSpec(name=name, filter_subject=feed_subject()),
                batch=window,
                max_outstanding=window,
            )
        else:
            filters, stale = feed_filters(spec.group)
            self.inner = Consumer(
                mqtt_url=spec.mqtt_url,
                client_id=spec.consumer_id,
                filters=filters,
                stale=stale,
                on_message=self._unpack,
                receive_maximum=window,
                session_expiry_s=spec.session_expiry_s,
                ca_file=spec.ca_file,
            )
        self.connected_event = self.inner.connected_event
        self.subscribed_event = self.inner.subscribed_event
        self.subscription = self.inner.subscription

    # -- Source ---------------------------------------------------------------------------------------
    @property
    def redacted_url(self) -> str:
        return self.inner.redacted_url

    @property
    def connects(self) -> int:
        return self.inner.connects

    @property
    def redeliveries(self) -> int:
        return self.inner.redeliveries

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    def leave(self, *, timeout_s: float = 15.0) -> bool:
        return self.inner.leave(timeout_s=timeout_s)

    def ack(self, tokens: Iterable[Any]) -> int:
        """Acknowledge inner messages (the engine committed them); an outer message whose inner ones are all
        acknowledged is acknowledged to the broker. Returns how many outer acks were sent."""
        done: list[Any] = []
        with self._lock:
            for outer in tokens:
                outer.remaining -= 1
                if outer.remaining == 0:
                    done.append(outer.token)
        return self.inner.ack(done) if done else 0

    # -- the inner source's thread --------------------------------------------------------------------
    def _unpack(self, topic: str, payload: bytes, token: Any) -> None:
        self.batches += 1
        try:
            batch = decode_feed(payload)
        except ContractError as exc:
            self.refused += 1
            log.error("alert feed: a message on %s is not a CommittedBatch (%s); refused", topic, exc)
            self._on_message(topic, payload, _Outer(token, 1))
            return
        if not batch.messages:
            self.inner.ack((token,))
            return
        outer = _Outer(token, len(batch.messages))
        for inner_topic, inner_payload in batch.messages:
            self._on_message(inner_topic, inner_payload, outer)
