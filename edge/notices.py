"""Notices for the user and the safety gate, as the cloud sends them on `mf/v1/<id>/down/{notice,gate}`.

- A Notice is shown once (QoS 1 redelivery is recognised by its notice_id), answered with a
  DeviceEvent(NOTICE_SHOWN) and, when the user confirms it, DeviceEvent(NOTICE_ACK).
- The SafetyGate is retained desired state: while it is blocked, the agent refuses to start sessions
  (DeviceEvent(SESSION_REFUSED)). The last gate is kept in the data folder, so a device restarted
  while offline stays blocked until the cloud clears it.
The display is a port (`Display`): a real device lights an LED or buzzes; the simulator records.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import msgspec

from contract.codec import decode_downlink
from contract.errors import ContractError
from contract.messages import DeviceEvent, EventType, Notice, SafetyGate
from edge.clock import Clock

log = logging.getLogger(__name__)

REMEMBERED_NOTICES = 256


class Display(Protocol):
    def show(self, notice: Notice) -> None: ...


class LogDisplay:
    def show(self, notice: Notice) -> None:
        log.warning("%s notice [%s] %s", notice.device_id, notice.severity.value, notice.text)


class SessionRefused(RuntimeError):
    """A session may not start now; the message says why in words for the user."""


class NoticeBoard:
    def __init__(
        self,
        device_id: str,
        clock: Clock,
        emit: Callable[[DeviceEvent], None],
        gate_file: Path,
        display: Display | None = None,
    ) -> None:
        self._device_id = device_id
        self._clock = clock
        self._emit = emit
        self._gate_file = gate_file
        self._display = display or LogDisplay()
        self._notices: OrderedDict[str, Notice] = OrderedDict()
        self._acked: set[str] = set()
        self.gate: SafetyGate | None = self._load_gate()

    # -- downlink handlers (async, as the link calls them) -------------------------------------------

    async def on_notice(self, topic: str, payload: bytes) -> None:
        message = self._decode(topic, payload)
        if not isinstance(message, Notice) or message.notice_id in self._notices:
            return
        self._notices[message.notice_id] = message
        while len(self._notices) > REMEMBERED_NOTICES:
            self._notices.popitem(last=False)
        self._display.show(message)
        self._event(EventType.NOTICE_SHOWN, message.notice_id)

    async def on_gate(self, topic: str, payload: bytes) -> None:
        message = self._decode(topic, payload)
        if not isinstance(message, SafetyGate):
            return
        self.gate = message
        self._gate_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._gate_file.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(message))
        tmp.replace(self._gate_file)

    # -- the user's side ---------------------------------------------------------------------------

    @property
    def notices(self) -> list[Notice]:
        return list(self._notices.values())

    @property
    def unacknowledged(self) -> list[Notice]:
        return [n for n in self._notices.values() if n.notice_id not in self._acked]

    def acknowledge(self, notice_id: str) -> None:
        if notice_id not in self._notices:
            raise KeyError(f"no notice {notice_id!r} on this device")
        if notice_id not in self._acked:
            self._acked.add(notice_id)
            self._event(EventType.NOTICE_ACK, notice_id)

    def check_may_start(self) -> None:
        """Raise SessionRefused while the safety gate is blocked (and say so to the cloud)."""
        if self.gate is not None and self.gate.blocked:
            reason = self.gate.text or "sessions are paused for your safety: " + ", ".join(self.gate.reasons)
            self._event(EventType.SESSION_REFUSED, "safety gate: " + ",".join(self.gate.reasons))
            raise SessionRefused(reason)

    # -- helpers -------------------------------------------------------------------------------------

    def _decode(self, topic: str, payload: bytes) -> Notice | SafetyGate | None:
        try:
            message = decode_downlink(topic, payload)
        except ContractError as exc:
            log.error("%s: refused downlink on %s: %s", self._device_id, topic, exc)
            return None
        if not isinstance(message, Notice | SafetyGate):  # a commit mark: edge/link.py handles those
            log.error("%s: a %s on %s is not for the notice board", self._device_id, type(message), topic)
            return None
        return message

    def _event(self, event: EventType, detail: str) -> None:
        now = self._clock.now()
        self._emit(
            DeviceEvent(device_id=self._device_id, seq=0, ts=now, event=event, at=now, detail=detail[:200])
        )

    def _load_gate(self) -> SafetyGate | None:
        try:
            return msgspec.json.decode(self._gate_file.read_bytes(), type=SafetyGate)
        except (FileNotFoundError, msgspec.DecodeError):
            return None
