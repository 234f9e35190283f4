"""The composition root of one edge agent: config -> outbox + session recorder + link, one TaskGroup.

    async with Agent(config) as agent:
        sid = agent.start_session(level=3)
        agent.record(sensor.read(clock.now(), agent.level))   # once a second
        agent.change_level(2)
        agent.end_session(EndReason.USER)
        await agent.drained()                                 # everything committed by the cloud

The recording API is synchronous: each call stores its messages in the outbox (durably, with their seq)
before returning, and wakes the link, which publishes in the background. A message leaves the outbox when
the cloud's CommitMark covers it (`EdgeConfig.ack_mode="committed"`, the default), or on its PUBACK
(`"broker"`, for a broker without microfleet's cloud): see edge/link.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Self

from contract.codec import encode
from contract.messages import DeviceEvent, EndReason, EventType, UplinkMessage, kind_of
from contract.topics import Downlink, uplink
from edge.clock import Clock, SystemClock
from edge.config import EdgeConfig
from edge.link import DownlinkHandler, Link, LinkState
from edge.notices import Display, NoticeBoard
from edge.ota.client import Boot, HealthCheck, OtaClient, load_trust, prepare_boot
from edge.ota.planner import OtaSettings
from edge.outbox import Outbox
from edge.protocols import ProtocolRuntime
from edge.protocols import load_trust as load_protocol_trust
from edge.safety import OutputStage
from edge.sensor import Reading
from edge.session import SessionRecorder, number

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AgentStats:
    connected: bool
    connects: int
    sent: int  # outbox rows the broker took (PUBACK 0x00; a row sent again counts again)
    committed: int  # outbox rows removed by the cloud's commit marks
    not_taken: int  # PUBACK 0x10 or >= 0x80: kept and sent again
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
        output: OutputStage | None = None,
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
        self._powered_off = False
        self._board: NoticeBoard | None = None
        self._output = output  # the output stage the protocol caps limit (edge/safety.py)
        self._protocols: ProtocolRuntime | None = None
        # firmware updates (edge/ota): the owner restarts the agent when `restart_requested` is set
        self.ota_settings = OtaSettings()
        self.battery: Callable[[], float | None] = lambda: None
        self.health_check: HealthCheck | None = None
        self.restart_requested = asyncio.Event()
        self._ota: OtaClient | None = None
        self._ota_task: asyncio.Task[None] | None = None

    # -- lifetime ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        cfg = self.config
        boot = prepare_boot(cfg.data_dir, cfg.fw_version, self.ota_settings)  # the running slot decides
        cfg = self.config = replace(cfg, fw_version=boot.running_version)
        self._recorder.fw_version = cfg.fw_version
        self._outbox = Outbox(
            cfg.outbox_path,
            cfg.device_id,
            max_rows=cfg.outbox_max_rows,
            max_bytes=cfg.outbox_max_bytes,
            sync=cfg.outbox_sync,
        )
        self._link = Link(
            cfg, self._outbox, self.clock, rng=self._rng, on_acked=self._check_empty, reported=self._reported
        )
        self._start_protocols(self._link)
        self._board = NoticeBoard(
            cfg.device_id, self.clock, lambda e: self._store([e]), cfg.data_dir / "gate.json", self._display
        )
        self._handlers.setdefault(Downlink.NOTICE.value, self._board.on_notice)
        self._handlers.setdefault(Downlink.GATE.value, self._board.on_gate)
        self._handlers[Downlink.COMMITTED.value] = self._link.on_committed
        self._ota = self._ota_client(boot)
        self._handlers[Downlink.OTA.value] = self._ota.on_downlink
        for kind, handler in self._handlers.items():
            self._link.on_downlink(kind, handler)
        self._check_empty()
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._link_task = self._tg.create_task(self._link.run(), name=f"link:{cfg.device_id}")
        self._ota_task = self._tg.create_task(self._ota.run(), name=f"ota:{cfg.device_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._link is not None:
                await self._link.close()
            if self._link_task is not None:
                self._link_task.cancel()
            if self._ota_task is not None:
                self._ota_task.cancel()
            if self._tg is not None:
                await self._tg.__aexit__(None, None, None)
        finally:
            if self._outbox is not None:
                self._outbox.close()
            self._outbox = self._link = self._tg = self._link_task = None
            self._ota = self._ota_task = None

    async def power_off(self) -> None:
        """A power cut, for fault injection: the connection drops without a goodbye (the broker sends the
        last will), every task stops where it is, and only what the outbox and the boot record had
        committed survives. Start a new Agent on the same data folder to "power on" again."""
        self._powered_off = True  # nothing the dying tasks try to record reaches the outbox
        if self._link is not None:
            self._link.abort()
        self._link = None  # no offline status from __aexit__: the device is dead, not shutting down
        await self.__aexit__(None, None, None)

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

    def _ota_client(self, boot: Boot) -> OtaClient:
        cfg = self.config
        assert self._link is not None
        return OtaClient(
            device_id=cfg.device_id,
            data_dir=cfg.data_dir,
            model=cfg.model,
            hw_rev=cfg.hw_rev,
            boot=boot,
            trust=load_trust(cfg.trusted_keys_file),
            clock=self.clock,
            emit=lambda report: self._store([report]),
            connected=self._link.connected,
            request_restart=self.restart_requested.set,
            session_running=lambda: self.session_id is not None,
            battery=lambda: self.battery(),
            health_check=self.health_check,
            settings=self.ota_settings,
            rng=self._rng,
        )

    @property
    def ota(self) -> OtaClient:
        if self._ota is None:
            raise RuntimeError("the agent is not running: use `async with Agent(config) as agent`")
        return self._ota

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
        protocol_id, protocol_version = self._protocol_gate(protocol_id, protocol_version)
        sid = session_id or f"{self._rng.getrandbits(64):016x}"
        self._store(
            self._recorder.start(
                sid, self.clock.now(), level, protocol_id=protocol_id, protocol_version=protocol_version
            )
        )
        self._sessions += 1
        self.protocols.session_started(sid, self.clock.now())
        return sid

    def record(self, reading: Reading) -> None:
        if self._recorder.session_id is None and self.protocols.stopped_for_safety:
            return  # the session was ended at a safety limit: the output is off
        self._store(self._recorder.record(reading))
        self._enforce(reading)

    def change_level(self, level: int) -> None:
        self._store(self._recorder.change_level(self.clock.now(), level))

    def end_session(self, reason: EndReason) -> None:
        if self._recorder.session_id is None and self.protocols.stopped_for_safety:
            return  # already ended at a safety limit
        self._store(self._recorder.end(self.clock.now(), reason))
        self.protocols.session_ended()  # applies a protocol staged during the session

    # -- treatment protocol (edge/protocols.py, edge/safety.py) --------------------------------------

    @property
    def protocols(self) -> ProtocolRuntime:
        """The active treatment protocol, its enforcement and the user's local-day usage."""
        if self._protocols is None:
            raise RuntimeError("the agent is not running: use `async with Agent(config) as agent`")
        return self._protocols

    def _start_protocols(self, link: Link) -> None:
        cfg = self.config
        self._protocols = ProtocolRuntime(
            cfg.device_id,
            cfg.model,
            self.clock,
            lambda e: self._store([e]),
            load_protocol_trust(cfg.trusted_keys_file),
            cfg.data_dir,
            tz_offset_min=cfg.tz_offset_min,
            output=self._output,
            on_applied=link.rebirth,
        )
        self._handlers.setdefault(Downlink.PROTOCOL.value, self._protocols.on_protocol)

    def _reported(self) -> tuple[str, int]:
        """(protocol_id, protocol_version) for the birth and will Status."""
        return self._protocols.reported() if self._protocols is not None else ("", 0)

    def _protocol_gate(self, protocol_id: str, protocol_version: int) -> tuple[str, int]:
        """Refuse a session beyond the protocol's daily limits; the protocol the session runs under."""
        self.protocols.check_may_start()
        return (protocol_id, protocol_version) if protocol_id else self.protocols.reported()

    def _enforce(self, reading: Reading) -> None:
        """Clamp the output to the zone cap; end the session at the protocol's limits."""
        level = self._recorder.level or 1
        if self.protocols.observe(reading.zone, level, reading.contact, reading.t):
            self.end_session(EndReason.SAFETY_LIMIT)

    def _store(self, messages: list[UplinkMessage]) -> None:
        if self._powered_off:
            return
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
        """Wait until the outbox is empty: every stored message committed by the cloud (ack_mode
        "committed"), or taken by the broker ("broker"). Wrap in a timeout."""
        await self._empty.wait()

    def stats(self) -> AgentStats:
        link, ob = self._link, self._outbox
        return AgentStats(
            connected=link is not None and link.stats.state is LinkState.CONNECTED,
            connects=link.stats.connects if link else 0,
            sent=link.stats.sent if link else 0,
            committed=link.stats.committed if link else 0,
            not_taken=link.stats.not_taken if link else 0,
            stored=self._stored,
            outbox_depth=ob.depth if ob else 0,
            outbox_dropped=ob.dropped if ob else 0,
            sessions=self._sessions,
        )
