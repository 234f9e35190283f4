"""Switching the alert engine from MICROFLEET_ALERT_FEED=committed back to uplinks on the production broker
(dynamic security, the service identities): the engine's persisted session still holds its share of the
feed (`$share/alerts/mf/v1/_cloud/committed`); the uplinks-mode engine that resumes it under the same
client id unsubscribes it on connect (cloud.ingest.consumer.uplink_filters' stale filters), so ingest's
batches no longer reach it: the broker answers ingest's feed publish 0x10 (no subscriber) and the engine
gets nothing, while device traffic still flows to it."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from cloud.alerts.feed_source import FeedSource
from cloud.alerts.service import AlertService
from cloud.db.migrate import migrate
from cloud.runtime.publisher import Outcome, Publisher
from contract import topics
from contract.codec import encode_feed
from contract.messages import CommittedBatch
from tests.cloud.test_alerts_engine_support import Clock, engine_config, overuse_days, wire
from tests.support.services import ProductionBroker

pytestmark = pytest.mark.slow
NOON = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
ENGINE_ID = "alerts-switch-1"


def publish_feed(prod: ProductionBroker) -> Outcome:
    """One (empty) CommittedBatch as svc-ingest publishes it."""
    with Publisher(prod.service_url("svc-ingest"), "ingest-switch") as pub:
        assert pub.wait_connected(10)
        [outcome] = pub.publish_many(
            [
                (
                    topics.COMMITTED_FEED,
                    encode_feed(CommittedBatch(consumer="ingest-switch", messages=())),
                    False,
                )
            ],
            10,
        )
    return outcome


def wait_until(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_an_engine_back_in_uplinks_mode_leaves_the_feed(prod: ProductionBroker, database_url: str) -> None:
    migrate(database_url)
    url = prod.service_url("svc-alerts")

    committed = AlertService(
        engine_config(url, database_url, ENGINE_ID, feed="committed"), clock=Clock(NOON), gate=False
    )
    with committed:
        feed = committed.consumer
        assert isinstance(feed, FeedSource)
        assert feed.subscribed_event.wait(10)
        outcome = publish_feed(prod)
        assert outcome.matched, outcome  # the engine's share of the feed took it
        wait_until(lambda: feed.batches == 1, 10, "the feed message")
    assert committed.cfg.leave_on_stop is False  # a stopped engine keeps its session (and subscriptions)

    uplinks = AlertService(
        engine_config(url, database_url, ENGINE_ID, feed="uplinks"), clock=Clock(NOON), gate=False
    )
    with uplinks:
        assert not isinstance(uplinks.consumer, FeedSource)
        assert uplinks.consumer.subscribed_event.wait(10)
        # the session was resumed and its feed subscription removed: nobody is subscribed to the feed now
        assert uplinks.consumer.connects == 1
        outcome = publish_feed(prod)
        assert outcome.no_subscribers, outcome
        # device traffic still reaches the engine, and the feed never did
        [first, *_] = overuse_days("switch-1", NOON, range(0, 1))
        with Publisher(prod.device("switch-1"), "switch-1") as dev:
            assert dev.wait_connected(10)
            [sent] = dev.publish_many([(*wire(first), False)], 10)
        assert sent.matched, sent
        wait_until(lambda: uplinks.messages >= 1, 10, "the device's message evaluated")
        time.sleep(0.3)
        assert uplinks.messages == 1
        assert "bad_topic" not in uplinks.engine.refused, uplinks.engine.refused
