"""The NATS tier's uplink source: a JetStream durable pull consumer on the MQTT gateway's `$MQTT_msgs`
stream, with the shape of the MQTT consumer (cloud.runtime.consumer) so a service picks either by URL.

What it rests on (docs/decisions/nats-tier.md, measured with nats-server 2.9.10 and 2.15.1):
- the gateway PUBACKs a device's QoS 1 publish once it is in `$MQTT_msgs` (R3), stored under
  `$MQTT.msgs.<topic with / as .>` with the raw payload. `$MQTT_msgs` is an INTEREST stream: a message
  no consumer's filter covers is acknowledged and dropped. So the durables exist before devices connect
  (`microfleet nats setup`, ensure_durable) and are never deleted by a scale-in; a process that starts
  creates its durable if it is missing (idempotent) but never changes one that exists.
- every process of a service binds the SAME durable and fetches batches from it: JetStream hands each
  message to one fetcher, explicit acks after the batch commits; a message not acknowledged within
  ack_wait (a process killed) goes to another fetcher. Several processes scale out with no change.
- while a stream elects a leader (a node died) fetches answer 503 or time out: retried with backoff,
  never fatal. nats-py reconnects across the cluster's URLs (`nats://h1:p1,nats://h2:p2`), re-subscribes
  the pull inbox, and buffers acks published meanwhile; an ack lost anyway means a redelivery, which the
  writers' natural keys absorb.

    source = JetStreamSource(urls="nats://a:4222,nats://b:4222", durable="ingest", name="ingest-1",
                             on_message=handoff.offer)     # on_message(topic, payload, token)
    source.start(); ...; source.ack(tokens_of_a_committed_batch); ...; source.leave(timeout_s=15)

Threads: one owned thread runs the asyncio loop (fetch and ack tasks); on_message is called there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cloud.runtime.mqtt import Backoff, redact
from cloud.runtime.threads import Threads

log = logging.getLogger(__name__)

MQTT_STREAM = "$MQTT_msgs"
MSGS_PREFIX = "$MQTT.msgs."
UPLINK_SUBJECT = MSGS_PREFIX + "mf.v1.*.up.>"
DEFAULT_BATCH = 500
DEFAULT_MAX_OUTSTANDING = 8000  # fetched and not acknowledged yet, per process (like Receive Maximum)
FETCH_TIMEOUT_S = 1.0
API_TIMEOUT_S = 5.0
FLUSH_TIMEOUT_S = 5.0
ERROR_LOG_EVERY_S = 10.0
ACK = b"+ACK"
DEFAULT_MAX_ACK_PENDING = 65536
DEFAULT_ACK_WAIT_S = 30.0

OnMessage = Callable[[str, bytes, str], None]


def topic_of(subject: str) -> str:
    """The MQTT topic of a `$MQTT_msgs` subject: `$MQTT.msgs.mf.v1.dev-1.up.samples` -> `mf/v1/dev-1/up/
    samples`. The gateway maps MQTT `/` to `.` and (2.10+) a `.` inside a level to `//`; nats-server 2.9.10
    refuses topics with a `.` (it closes the connection). Any other subject comes back as it is: the
    batcher quarantines it as an unknown topic."""
    if not subject.startswith(MSGS_PREFIX):
        return subject
    return "/".join(token.replace("//", ".") for token in subject[len(MSGS_PREFIX) :].split("."))


def split_urls(urls: str) -> list[str]:
    """`nats://h1:p1,nats://h2:p2` -> the servers, in order; ValueError if one is not nats:// or tls://."""
    servers = [u.strip() for u in urls.split(",") if u.strip()]
    if not servers:
        raise ValueError("no NATS URL: use nats://host:port[,nats://host:port...]")
    for url in servers:
        if not url.startswith(("nats://", "tls://")):
            raise ValueError(f"NATS URL {redact(url)!r} must start with nats:// or tls://")
    return servers


def redact_urls(urls: str) -> str:
    return ",".join(redact(u.strip()) for u in urls.split(","))


@dataclass(frozen=True, slots=True)
class DurableSpec:
    """A durable pull consumer on `$MQTT_msgs`. `replicas` 0: as many as the stream has (R3).
    `max_ack_pending` bounds what all the processes sharing it hold unacknowledged together (size it to
    processes x their max_outstanding); `ack_wait_s`: a message held longer goes to another process."""

    name: str = "ingest"
    filter_subject: str = UPLINK_SUBJECT
    max_ack_pending: int = DEFAULT_MAX_ACK_PENDING
    ack_wait_s: float = DEFAULT_ACK_WAIT_S
    replicas: int = 0
    stream: str = MQTT_STREAM

    def config(self, stream_replicas: int) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        return ConsumerConfig(
            durable_name=self.name,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=self.filter_subject,
            max_ack_pending=self.max_ack_pending,
            ack_wait=self.ack_wait_s,
            max_deliver=-1,
            num_replicas=self.replicas or stream_replicas,
        )


async def ensure_durable(js: Any, spec: DurableSpec, *, update: bool = False) -> str:
    """Create the durable if it is missing ("created"); with `update`, apply spec to one that exists
    ("updated"), else leave it ("exists"). Raises nats.js.errors.NotFoundError while the stream does not
    exist (the gateway makes it when the first MQTT client connects)."""
    from nats.js.errors import NotFoundError

    stream = await js.stream_info(spec.stream)
    try:
        await js.consumer_info(spec.stream, spec.name)
    except NotFoundError:
        await js.add_consumer(spec.stream, spec.config(stream.config.num_replicas or 1))
        return "created"
    if not update:
        return "exists"
    await js.add_consumer(spec.stream, spec.config(stream.config.num_replicas or 1))
    return "updated"


class JetStreamSource:
    """Batches from one durable, handed to `on_message(topic, payload, token)`; `ack(tokens)` after the
    commit. At most `max_outstanding` messages are held unacknowledged by this process (back-pressure:
    no fetch while it is reached). Same lifecycle as cloud.runtime.consumer.Consumer."""

    def __init__(
        self,
        *,
        urls: str,
        durable: str,
        name: str,
        on_message: OnMessage,
        spec: DurableSpec | None = None,
        batch: int = DEFAULT_BATCH,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
        fetch_timeout_s: float = FETCH_TIMEOUT_S,
    ) -> None:
        self.servers = split_urls(urls)
        self.redacted_url = redact_urls(urls)
        self.spec = spec or DurableSpec(name=durable)
        self.client_id = name
        self.subscription = f"{self.spec.stream} durable {durable} ({self.spec.filter_subject})"
        self._on_message = on_message
        self._batch = batch
        self._max_outstanding = max_outstanding
        self._fetch_timeout_s = fetch_timeout_s
        self.connected_event = threading.Event()  # connected and bound to the durable
        self.subscribed_event = self.connected_event
        self.connects = 0
        self.redeliveries = 0  # messages JetStream delivered more than once (ack_wait expired, a crash)
        self.fetch_errors = 0  # 503s and other failed fetches (elections, lost connections)
        self.acks_sent = 0
        self._lock = threading.Lock()
        self._acks: list[str] = []
        self._outstanding = 0
        self._leaving = threading.Event()  # fetch no more
        self._stopping = threading.Event()  # close now
        self._fetching_done = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ack_wake: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._threads = Threads(name)
        self._last_error_log = 0.0

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._threads.spawn("jetstream", lambda: asyncio.run(self._main()))

    def leave(self, *, timeout_s: float = 15.0) -> bool:
        """Stop fetching, wait until everything handed over is acknowledged (the owner keeps committing
        and acking meanwhile), then close. The durable stays: the other processes go on. False if that did
        not finish within timeout_s: what is still held comes back to another process after ack_wait."""
        self._leaving.set()
        self._wake_loop()
        deadline = time.monotonic() + timeout_s
        done = False
        while time.monotonic() < deadline:
            with self._lock:
                idle = self._outstanding == 0 and not self._acks
            if idle and (self._fetching_done.is_set() or not self._threads.alive):
                done = True
                break
            time.sleep(0.02)
        if not done:
            with self._lock:
                held = self._outstanding
            log.warning(
                "%s: %d messages not acknowledged on leaving; JetStream redelivers them after ack_wait",
                self.client_id,
                held,
            )
        self.stop()
        return done

    def stop(self) -> None:
        """Send the acks already given, close the connection and join the thread (idempotent)."""
        self._leaving.set()
        self._stopping.set()
        self._wake_loop()
        self._threads.join(FLUSH_TIMEOUT_S + API_TIMEOUT_S + self._fetch_timeout_s)
        self.connected_event.clear()

    def _wake_loop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has ended
            loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for event in (self._ack_wake, self._room):
            if event is not None:
                event.set()

    # -- acks (any thread) ---------------------------------------------------------------------------
    def ack(self, tokens: Iterable[str]) -> int:
        """Acknowledge committed messages (their tokens); sent by the loop thread, flushed per call."""
        replies = [t for t in tokens if t]
        if not replies:
            return 0
        with self._lock:
            self._acks.extend(replies)
        loop, wake = self._loop, self._ack_wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)
        return len(replies)

    # -- the loop thread ---------------------------------------------------------------------------------
    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ack_wake, self._room = asyncio.Event(), asyncio.Event()
        nc = await self._connect()
        if nc is None:
            self._fetching_done.set()
            return
        acker = asyncio.create_task(self._ack_loop(nc), name=f"jetstream-acks:{self.client_id}")
        try:
            psub = await self._bind(nc)
            if psub is not None:
                await self._fetch_loop(psub)
            self._fetching_done.set()
            while not self._stopping.is_set():  # until stop(): the owner gives its last acks meanwhile
                await self._pause(0.2)
        finally:
            self._fetching_done.set()
            acker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acker
            await self._send_acks(nc)
            with contextlib.suppress(Exception):  # closing is best effort; the server drops us anyway
                await asyncio.wait_for(nc.close(), FLUSH_TIMEOUT_S)

    async def _connect(self) -> Any:
        import nats

        backoff = Backoff(0.2, 5.0)

        async def disconnected() -> None:
            self.connected_event.clear()
            log.warning("%s: disconnected from NATS; reconnecting", self.client_id)

        async def reconnected() -> None:
            self.connects += 1
            log.info("%s: reconnected to NATS at %s", self.client_id, redact(str(nc.connected_url or "")))
            self.connected_event.set()

        async def error(exc: Exception) -> None:
            self._log_error("NATS connection error", exc)

        while not self._stopping.is_set():
            try:
                nc = await nats.connect(
                    servers=self.servers,
                    name=self.client_id,
                    connect_timeout=2.0,
                    reconnect_time_wait=0.5,
                    max_reconnect_attempts=-1,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                )
            except (OSError, TimeoutError, nats.errors.Error) as exc:
                self._log_error(f"no NATS server of {self.redacted_url} reachable", exc)
                await self._pause(backoff.next())
                continue
            self.connects += 1
            log.info("%s connected to NATS at %s", self.client_id, redact(str(nc.connected_url or "")))
            return nc
        return None

    async def _bind(self, nc: Any) -> Any:
        """Bind the durable (created if missing), retrying while the stream or its leader is not there."""
        import nats

        js = nc.jetstream(timeout=API_TIMEOUT_S)
        backoff = Backoff(0.2, 5.0)
        while not self._leaving.is_set():
            try:
                outcome = await ensure_durable(js, self.spec)
            except (TimeoutError, nats.errors.Error) as exc:
                self._log_error(
                    f"durable {self.spec.name} on {self.spec.stream} not ready (the gateway makes the "
                    "stream when the first MQTT client connects; `microfleet nats setup`)",
                    exc,
                )
                await self._pause(backoff.next())
                continue
            psub = await js.pull_subscribe_bind(durable=self.spec.name, stream=self.spec.stream)
            log.info("%s subscribed to %s (%s)", self.client_id, self.subscription, outcome)
            self.connected_event.set()
            return psub
        return None

    async def _fetch_loop(self, psub: Any) -> None:
        import nats

        backoff = Backoff(0.1, 2.0)
        assert self._room is not None
        while not self._leaving.is_set():
            with self._lock:
                room = self._max_outstanding - self._outstanding
            if room <= 0:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 1.0)
                continue
            try:
                msgs = await psub.fetch(min(self._batch, room), timeout=self._fetch_timeout_s)
            except TimeoutError:  # nothing to fetch (nats' TimeoutError and FetchTimeoutError are ones)
                continue
            except nats.errors.Error as exc:  # 503 while a stream elects a leader, no responders, ...
                self.fetch_errors += 1
                self._log_error("fetch failed; retrying", exc)
                await self._pause(backoff.next())
                continue
            backoff.reset()
            if not msgs:
                await self._pause(0.05)
                continue
            self._hand_over(msgs)

    def _hand_over(self, msgs: list[Any]) -> None:
        with self._lock:
            self._outstanding += len(msgs)
        for m in msgs:
            reply = m.reply
            # $JS.ACK.<stream>.<durable>.<delivered>.<sseq>.<cseq>.<ts>.<pending> (9 tokens), or with
            # <domain>.<account hash> after ACK and a random token at the end (12)
            parts = reply.split(".")
            delivered = parts[6] if len(parts) >= 12 else parts[4] if len(parts) > 4 else "1"
            if delivered != "1":
                self.redeliveries += 1
            self._on_message(topic_of(m.subject), m.data, reply)

    async def _ack_loop(self, nc: Any) -> None:
        assert self._ack_wake is not None
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            await self._send_acks(nc)

    async def _send_acks(self, nc: Any) -> None:
        import nats

        with self._lock:
            replies, self._acks = self._acks, []
        if not replies:
            return
        try:
            for reply in replies:
                await nc.publish(reply, ACK)
            await nc.flush(FLUSH_TIMEOUT_S)
        except (TimeoutError, nats.errors.Error) as exc:  # buffered for the reconnect, or redelivered later
            self._log_error(f"{len(replies)} acks not confirmed (a redelivery will follow if lost)", exc)
        self.acks_sent += len(replies)
        with self._lock:
            self._outstanding -= len(replies)
        if self._room is not None:
            self._room.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when stopping."""
        assert self._room is not None
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), seconds)

    def _log_error(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        level = logging.WARNING if now - self._last_error_log >= ERROR_LOG_EVERY_S else logging.DEBUG
        if level == logging.WARNING:
            self._last_error_log = now
        log.log(level, "%s: %s: %s %s", self.client_id, what, type(exc).__name__, exc)
