"""The engine's inbox (paho's thread -> the engine thread): a batch leaves when it is full or when its
first message has waited the batch delay, whichever comes first; nothing is lost or reordered."""

from __future__ import annotations

import threading
import time

from cloud.alerts.service import Inbox


def offer_later(inbox: Inbox, n: int, delay_s: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay_s)
        for i in range(n):
            inbox.offer(f"t/{i}", b"x", i)  # type: ignore[arg-type]

    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_full_batch_leaves_at_once_and_a_partial_one_at_its_deadline() -> None:
    inbox, stop = Inbox(), threading.Event()
    writer = offer_later(inbox, 7, 0.05)
    t0 = time.monotonic()
    full = inbox.take(5, 30.0, stop)  # a 30 s delay: only a full batch can end this wait early
    assert [topic for topic, _, _ in full] == [f"t/{i}" for i in range(5)]
    assert time.monotonic() - t0 < 5
    writer.join()
    t1 = time.monotonic()
    rest = inbox.take(5, 0.2, stop)  # the 2 left over wait for the delay, then leave
    assert [topic for topic, _, _ in rest] == ["t/5", "t/6"]
    assert 0.1 <= time.monotonic() - t1 < 5


def test_a_late_first_message_wakes_the_taker_and_stop_ends_an_empty_wait() -> None:
    inbox, stop = Inbox(), threading.Event()
    writer = offer_later(inbox, 1, 0.1)
    got: list[object] = []
    while not got:  # an empty take returns [] after 0.5 s: the engine loop simply takes again
        got = list(inbox.take(100, 0.01, stop))
    writer.join()
    assert len(got) == 1
    stop.set()
    assert inbox.take(100, 0.01, stop) == []
