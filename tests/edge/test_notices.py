"""Notices reach the user once and are acknowledged; a blocking safety gate stops sessions, even offline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from contract.codec import encode
from contract.messages import DeviceEvent, EventType, Notice, SafetyGate, Severity
from contract.topics import Downlink, downlink
from edge.app import Agent
from edge.notices import SessionRefused
from tests.edge.conftest import Collector, fast_config
from tests.support.services import Mosquitto

Collect = Callable[[str, str], AbstractAsyncContextManager[Collector]]
NOW = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)


class Screen:
    def __init__(self) -> None:
        self.shown: list[Notice] = []
        self.changed = asyncio.Event()

    def show(self, notice: Notice) -> None:
        self.shown.append(notice)
        self.changed.set()


def publish(broker: Mosquitto, topic: str, payload: bytes, *, retain: bool = False) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def events(c: Collector, kind: EventType) -> list[DeviceEvent]:
    return [m for m in c.messages() if isinstance(m, DeviceEvent) and m.event is kind]


async def test_notice_shown_once_and_acknowledged(
    tmp_path: Path, broker: Mosquitto, collect: Collect
) -> None:
    cfg = fast_config(tmp_path, broker.url)
    screen = Screen()
    notice = Notice(
        device_id=cfg.device_id,
        ts=NOW,
        notice_id="a-17",
        severity=Severity.WARNING,
        text="Take a rest day tomorrow: your skin recovers between sessions.",
        rule_id="O3",
    )
    async with collect(broker.url, cfg.device_id) as c, Agent(cfg, display=screen) as agent:
        async with asyncio.timeout(10):
            await agent.link.connected.wait()
        for _ in range(2):  # a QoS 1 redelivery must not show it twice
            publish(broker, downlink(cfg.device_id, Downlink.NOTICE), encode(notice))
        await c.wait_for(lambda: bool(events(c, EventType.NOTICE_SHOWN)))
        assert [n.notice_id for n in screen.shown] == ["a-17"]
        assert [n.notice_id for n in agent.notices.unacknowledged] == ["a-17"]
        agent.notices.acknowledge("a-17")
        await c.wait_for(lambda: bool(events(c, EventType.NOTICE_ACK)))
        assert events(c, EventType.NOTICE_ACK)[0].detail == "a-17"
        assert agent.notices.unacknowledged == []
        # a notice for another device on our topic is refused, not shown
        other = Notice(device_id="someone-else", ts=NOW, notice_id="x", severity=Severity.INFO, text="hi")
        publish(broker, downlink(cfg.device_id, Downlink.NOTICE), encode(other))
        # a later notice on the same topic arrives after the refused one (MQTT keeps order per topic)
        later = Notice(
            device_id=cfg.device_id, ts=NOW, notice_id="a-18", severity=Severity.INFO, text="Add gel."
        )
        publish(broker, downlink(cfg.device_id, Downlink.NOTICE), encode(later))
        async with asyncio.timeout(10):
            while len(screen.shown) < 2:
                screen.changed.clear()
                await screen.changed.wait()
        assert [n.notice_id for n in screen.shown] == ["a-17", "a-18"]


async def test_safety_gate_blocks_sessions_even_after_an_offline_restart(
    tmp_path: Path, broker: Mosquitto, collect: Collect
) -> None:
    cfg = fast_config(tmp_path, broker.url)
    gate_topic = downlink(cfg.device_id, Downlink.GATE)
    blocked = SafetyGate(
        device_id=cfg.device_id,
        ts=NOW,
        blocked=True,
        reasons=("pregnancy",),
        text="Sessions are paused: microcurrent is not for use during pregnancy.",
    )
    publish(broker, gate_topic, encode(blocked), retain=True)
    async with collect(broker.url, cfg.device_id) as c:
        async with Agent(cfg) as agent:
            async with asyncio.timeout(10):
                while agent.notices.gate is None:  # noqa: ASYNC110 - the retained gate arrives after connect
                    await asyncio.sleep(0.01)
            with pytest.raises(SessionRefused, match="pregnancy"):
                agent.start_session(2)
            await c.wait_for(lambda: bool(events(c, EventType.SESSION_REFUSED)))
        # restarted with no broker at all: the gate kept in the data folder still blocks
        offline = fast_config(tmp_path, "mqtt://127.0.0.1:1", device_id=cfg.device_id)
        async with Agent(offline) as agent:
            with pytest.raises(SessionRefused):
                agent.start_session(2)
    # the cloud clears the gate: sessions may start again
    publish(
        broker, gate_topic, encode(SafetyGate(device_id=cfg.device_id, ts=NOW, blocked=False)), retain=True
    )
    async with Agent(cfg) as agent:
        async with asyncio.timeout(10):
            while agent.notices.gate is None or agent.notices.gate.blocked:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert agent.start_session(2)
