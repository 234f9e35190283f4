"""A consumer that asks for some uplink kinds receives only those, also when its persisted session was
subscribed to every uplink before (the alert engine after an upgrade: its old catch-all is dropped)."""

from __future__ import annotations

import threading
import time

from bench._common import Publisher
from cloud.ingest.consumer import AckToken, Consumer
from contract import topics
from contract.topics import Uplink
from tests.support.services import Mosquitto


class Received:
    def __init__(self, consumer_kwargs: dict[str, object], url: str) -> None:
        self.topics: list[str] = []
        self.lock = threading.Lock()
        self.consumer = Consumer(
            mqtt_url=url, client_id="kinds-c1", group="kinds", on_message=self.on_message, **consumer_kwargs
        )  # type: ignore[arg-type]

    def on_message(self, topic: str, _payload: bytes, token: AckToken) -> None:
        with self.lock:
            self.topics.append(topic)
        self.consumer.ack([token])

    def __enter__(self) -> Received:
        self.consumer.start()
        assert self.consumer.subscribed_event.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.consumer.stop()

    def kinds_after(self, publisher: Publisher, marker: str) -> set[str]:
        """Publish one message of every kind, then a samples marker; the kinds seen until the marker."""
        msgs = [(topics.uplink("dev-k", k), b"{}") for k in Uplink]
        publisher.publish_all([*msgs, (topics.uplink(marker, Uplink.SAMPLES), b"{}")])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self.lock:
                if any(f"/{marker}/" in t for t in self.topics):
                    return {t.rsplit("/", 1)[1] for t in self.topics if "/dev-k/" in t}
            time.sleep(0.01)
        raise AssertionError("the marker never arrived")


def test_only_the_kinds_asked_for_even_after_a_catch_all_session(broker: Mosquitto) -> None:
    pub = Publisher(broker.url, "kinds-pub")
    try:
        with Received({}, broker.url) as everything:  # a persisted session with the catch-all filter
            assert everything.kinds_after(pub, "m0") == {k.value for k in Uplink}
        wanted = (Uplink.SESSION_START, Uplink.SAMPLES)
        with Received({"kinds": wanted}, broker.url) as some:  # the same client id: session present
            got = some.kinds_after(pub, "m1")
        assert got == {"session_start", "samples"}
    finally:
        pub.close()
