"""The composition root of one edge agent: config -> outbox + session recorder + link, one TaskGroup.

    async with Agent(config) as agent:
        sid = agent.start_session(level=3)
        agent.record(sensor.read(clock.now(), agent.level))   # once a second
        agent.change_level(2)
        agent.end_session(EndReason.USER)
        await agent.drained()                                 # everything acknowledged by the broker

The recording API is synchronous: each call stores its messages in the outbox (durably, with their seq)
before returning, and wakes the link, which publishes in the background.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from contract.codec import encode
from contract.messages import DeviceEvent, EndReason, EventType, UplinkMessage, kind_of
from contract.topics import Downlink, uplink
from edge.clock import Clock, SystemClock
from edge.config import EdgeConfig
from edge.link import DownlinkHandler, Link, LinkState
from edge.notices import Display, NoticeBoard
from edge.outbox import Outbox
from edge.sensor import Reading
from edge.session import SessionRecorder, number

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AgentStats:
    connected: bool
    connects: int
    published: int
    stored: int
    outbox_depth: int
    outbox_dropped: int
    sessions: int


class Agent:
    def __init__(
        self,
        config: EdgeConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        display: Display | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._recorder = SessionRecorder(
            config.device_id,
            samples_per_batch=config.samples_per_batch,
            tz_offset_min=config.tz_offset_min,
            fw_version=config.fw_version,
        )
        self._outbox: Outbox | None = None
        self._link: Link | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._link_task: asyncio.Task[None] | None = None
        self._empty = asyncio.Event()
        self._stored = 0
        self._sessions = 0
        self._unreported_drops = 0
        self._last_overflow_event: float | None = None
        self._handlers: dict[str, DownlinkHandler] = {}
        self._display = display
        self._board: NoticeBoard | None = None

    # -- lifetime ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        cfg = self.config
        self._outbox = Outbox(
            cfg.outbox_path,
            cfg.device_id,
            max_rows=cfg.outbox_max_rows,
            max_bytes=cfg.outbox_max_bytes,
            sync=cfg.outbox_sync,
        )
        self._link = Link(cfg, self._outbox, self.clock, rng=self._rng, on_acked=self._check_empty)
        self._board = NoticeBoard(
            cfg.device_id, self.clock, lambda e: self._store([e]), cfg.data_dir / "gate.json", self._display
        )
        self._handlers.setdefault(Downlink.NOTICE.value, self._board.on_notice)
        self._handlers.setdefault(Downlink.GATE.value, self._board.on_gate)
        for kind, handler in self._handlers.items():
            self._link.on_downlink(kind, handler)
        self._check_empty()
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._link_task = self._tg.create_task(self._link.run(), name=f"link:{cfg.device_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._link is not None:
                await self._link.close()
            if self._link_task is not None:
                self._link_task.cancel()
            if self._tg is not None:
                await self._tg.__aexit__(None, None, None)
        finally:
            if self._outbox is not None:
                self._outbox.close()
            self._outbox = self._link = self._tg = self._link_task = None

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            raise RuntimeError("the agent is not running: use `async with Agent(config) as agent`")
        return self._outbox

    @property
    def notices(self) -> NoticeBoard:
        """Notices shown to the user, their acknowledgement, and the safety gate."""
        if self._board is None:
            raise RuntimeError("the agent is not running: use `async with Agent(config) as agent`")
        return self._board

    @property
    def link(self) -> Link:
        if self._link is None:
            raise RuntimeError("the agent is not running: use `async with Agent(config) as agent`")
        return self._link

    def on_downlink(self, kind: str, handler: DownlinkHandler) -> None:
        """Register a handler for `mf/v1/<id>/down/<kind>` (before or after start)."""
        self._handlers[kind] = handler
        if self._link is not None:
            self._link.on_downlink(kind, handler)

    # -- recording -----------------------------------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        return self._recorder.session_id

    @property
    def level(self) -> int | None:
        return self._recorder.level

    def start_session(
        self, level: int, *, session_id: str | None = None, protocol_id: str = "", protocol_version: int = 0
    ) -> str:
        self.notices.check_may_start()  # raises SessionRefused under a blocking safety gate
        sid = session_id or f"{self._rng.getrandbits(64):016x}"
        self._store(
            self._recorder.start(
                sid, self.clock.now(), level, protocol_id=protocol_id, protocol_version=protocol_version
            )
        )
        self._sessions += 1
        return sid

    def record(self, reading: Reading) -> None:
        self._store(self._recorder.record(reading))

    def change_level(self, level: int) -> None:
        self._store(self._recorder.change_level(self.clock.now(), level))

    def end_session(self, reason: EndReason) -> None:
        self._store(self._recorder.end(self.clock.now(), reason))

    def _store(self, messages: list[UplinkMessage]) -> None:
        outbox = self.outbox
        for message in messages:
            topic = uplink(self.config.device_id, kind_of(message))
            result = outbox.put(topic, lambda seq, m=message: encode(number(m, seq)))  # type: ignore[misc]
            self._stored += 1
            self._unreported_drops += result.dropped
        if messages:
            self._empty.clear()
            self.link.notify()
            self._maybe_report_overflow()

    def _maybe_report_overflow(self) -> None:
        """At most one OUTBOX_OVERFLOW event per interval, so that reports cannot fill the outbox."""
        if not self._unreported_drops:
            return
        mono = self.clock.monotonic()
        last = self._last_overflow_event
        if last is not None and mono - last < self.config.overflow_event_interval_s:
            return
        n, self._unreported_drops = self._unreported_drops, 0
        self._last_overflow_event = mono
        now = self.clock.now()
        event = DeviceEvent(
            device_id=self.config.device_id,
            seq=0,
            ts=now,
            event=EventType.OUTBOX_OVERFLOW,
            at=now,
            session_id=self.session_id,
            value=float(n),
            detail=f"outbox full: dropped {n} messages (total {self.outbox.dropped})",
        )
        log.warning("%s: %s", self.config.device_id, event.detail)
        self._store([event])

    # -- observation ---------------------------------------------------------------------------------

    def _check_empty(self) -> None:
        if self._outbox is not None and self._outbox.depth == 0:
            self._empty.set()

    async def drained(self) -> None:
        """Wait until every stored message has been acknowledged by the broker (wrap in a timeout)."""
        await self._empty.wait()

    def stats(self) -> AgentStats:
        link, ob = self._link, self._outbox
        return AgentStats(
            connected=link is not None and link.stats.state is LinkState.CONNECTED,
            connects=link.stats.connects if link else 0,
            published=link.stats.published if link else 0,
            stored=self._stored,
            outbox_depth=ob.depth if ob else 0,
            outbox_dropped=ob.dropped if ob else 0,
            sessions=self._sessions,
        )
