"""The agent and the signed treatment protocol, on a real broker: verify, check, stage, apply between
sessions, keep the last good one, report it (events and the birth Status), and enforce it."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt
import pytest

from contract.messages import DeviceEvent, EndReason, EventType, SessionEnd, Status, Zone
from contract.protocol import TreatmentProtocol, ZoneLimit, starter_protocol
from contract.signing import SignedDocument, SigningKey
from contract.topics import Downlink, downlink
from edge.app import Agent
from edge.clock import ManualClock
from edge.config import EdgeConfig
from edge.notices import SessionRefused
from edge.safety import HeldLimit
from edge.sensor import Reading
from tests.edge.conftest import Collector, fast_config
from tests.edge.marker import CommitPeer
from tests.support.services import Mosquitto

Collect = Callable[[str, str], AbstractAsyncContextManager[Collector]]
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def publish(broker: Mosquitto, topic: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def signed(key: SigningKey, protocol: TreatmentProtocol) -> bytes:
    return msgspec.json.encode(key.sign(protocol))


def config(tmp_path: Path, broker: Mosquitto, key: SigningKey, **kw: object) -> EdgeConfig:
    trust = tmp_path / "trusted-keys.json"
    trust.write_bytes(msgspec.json.encode([key.trusted()]))
    return fast_config(tmp_path, broker.url, trusted_keys_file=trust, **kw)


def events(c: Collector, kind: EventType) -> list[DeviceEvent]:
    """Events of a kind, once each (at-least-once delivery: a reconnect may re-send; the cloud
    de-duplicates on (device_id, seq), so do we)."""
    found = {m.seq: m for m in c.messages() if isinstance(m, DeviceEvent) and m.event is kind}
    return [found[seq] for seq in sorted(found)]


def births(c: Collector) -> list[Status]:
    return [m for m in c.statuses() if m.state.value == "online"]


def version(v: int, **changes: object) -> TreatmentProtocol:
    return msgspec.structs.replace(starter_protocol(NOW), version=v, **changes)


async def test_applies_a_signed_protocol_and_refuses_forgeries_keeping_the_last_good_one(
    tmp_path: Path, broker: Mosquitto, collect: Collect, marks: CommitPeer
) -> None:
    key, stranger = SigningKey.generate(), SigningKey.generate()
    cfg = config(tmp_path, broker, key)
    topic = downlink(cfg.device_id, Downlink.PROTOCOL)
    async with collect(broker.url, cfg.device_id) as c, Agent(cfg) as agent:
        publish(broker, topic, signed(key, version(2)))
        await c.wait_for(lambda: bool(events(c, EventType.PROTOCOL_APPLIED)))
        applied = events(c, EventType.PROTOCOL_APPLIED)[0]
        assert (applied.detail, applied.value) == ("home-starter", 2.0)
        # the agent reconnects to announce it: a birth (and a matching will) carrying the version
        await c.wait_for(lambda: any(b.protocol_version == 2 for b in births(c)))
        assert births(c)[-1].protocol_id == "home-starter"

        good = key.sign(version(3))
        forged = version(3, level_current_ua=(80.0, 160.0, 240.0, 320.0, 390.0))
        tampered = SignedDocument(
            good.key_id, good.signature, base64.b64encode(msgspec.json.encode(forged)).decode()
        )
        over = version(5, level_current_ua=(80.0, 500.0))
        cases = [
            (msgspec.json.encode(tampered), "signature does not match"),
            (signed(stranger, version(4)), "unknown key"),
            (signed(key, over), "level_current_ua[2]=500.0: above the model's rated maximum (limit 400)"),
            (signed(key, version(6, models=("mf-pro-1",))), "protocol is not for this model"),
            (b"{not json", "not a signed document"),
            # an older version of the same protocol, genuinely signed, is a replay
            (signed(key, version(1)), "home-starter v1: version 1 is older than the active version 2"),
        ]
        for n, (payload, reason) in enumerate(cases, start=1):
            publish(broker, topic, payload)
            await c.wait_for(lambda n=n: len(events(c, EventType.PROTOCOL_REJECTED)) >= n)  # type: ignore[misc]
            rejected = events(c, EventType.PROTOCOL_REJECTED)[-1]
            assert reason in rejected.detail
        labels = [e.detail.split(":")[0] for e in events(c, EventType.PROTOCOL_REJECTED)]
        assert labels[:4] == ["home-starter v3", "home-starter v4", "home-starter v5", "home-starter v6"]
        assert [e.value for e in events(c, EventType.PROTOCOL_REJECTED)[:4]] == [3.0, 4.0, 5.0, 6.0]
        assert agent.protocols.reported() == ("home-starter", 2)
        assert len(events(c, EventType.PROTOCOL_APPLIED)) == 1
        await agent.drained()

    # a restart (the retained copy is now a bad one) still runs the last good protocol from disk
    async with collect(broker.url, cfg.device_id) as c2, Agent(cfg) as agent:
        assert agent.protocols.reported() == ("home-starter", 2)
        await c2.wait_for(lambda: any(b.protocol_version == 2 for b in births(c2)))


async def test_a_protocol_staged_during_a_session_is_applied_after_it_ends(
    tmp_path: Path, broker: Mosquitto, collect: Collect
) -> None:
    key = SigningKey.generate()
    cfg = config(tmp_path, broker, key)
    topic = downlink(cfg.device_id, Downlink.PROTOCOL)
    async with collect(broker.url, cfg.device_id) as c, Agent(cfg) as agent:
        publish(broker, topic, signed(key, version(1)))
        await c.wait_for(lambda: len(events(c, EventType.PROTOCOL_APPLIED)) == 1)
        agent.start_session(2)
        agent.protocols.handled.clear()
        publish(broker, topic, signed(key, version(2, session_max_s=300)))
        # the retained v1 may come again first (applying v1 reconnected the link to announce it): wait for v2
        async with asyncio.timeout(10):
            while agent.protocols.staged is None:
                await agent.protocols.handled.wait()
                agent.protocols.handled.clear()
        assert agent.protocols.staged is not None
        assert agent.protocols.reported() == ("home-starter", 1)  # not during the session
        agent.end_session(EndReason.USER)
        assert agent.protocols.reported() == ("home-starter", 2)
        await c.wait_for(lambda: len(events(c, EventType.PROTOCOL_APPLIED)) == 2)
        end = next(m for m in c.data() if isinstance(m, SessionEnd))
        applied = events(c, EventType.PROTOCOL_APPLIED)[-1]
        assert applied.value == 2.0 and applied.seq > end.seq  # applied after the session ended
        await c.wait_for(lambda: any(b.protocol_version == 2 for b in births(c)))


def reading(t: datetime, zone: Zone, current: float = 300.0) -> Reading:
    return Reading(t, current, current * 5e-3, 5000.0, True, zone)


async def test_the_agent_enforces_caps_session_length_and_daily_limits(
    tmp_path: Path, broker: Mosquitto, collect: Collect, marks: CommitPeer
) -> None:
    key = SigningKey.generate()
    cfg = config(tmp_path, broker, key, tz_offset_min=60)
    start = (datetime.now(UTC) - timedelta(days=2)).replace(hour=9, minute=0, second=0, microsecond=0)
    clock = ManualClock(start)
    output = HeldLimit()
    protocol = version(
        1,
        level_current_ua=(100.0, 300.0),
        zones=(ZoneLimit(Zone.CHEEK_L, 200.0, 60.0), ZoneLimit(Zone.UNDER_EYE_L, 120.0, 30.0)),
        session_max_s=30,
        sessions_per_day_max=2,
        daily_active_max_s=50,
    )
    async with collect(broker.url, cfg.device_id) as c, Agent(cfg, clock=clock, output=output) as agent:
        publish(broker, downlink(cfg.device_id, Downlink.PROTOCOL), signed(key, protocol))
        await c.wait_for(lambda: len(events(c, EventType.PROTOCOL_APPLIED)) == 1)
        agent.start_session(2)
        for s in range(1, 40):
            clock.advance(1)
            zone = Zone.CHEEK_L if s < 10 else Zone.FOREHEAD if s < 20 else Zone.UNDER_EYE_L
            agent.record(reading(clock.now(), zone))
            if agent.session_id is None:
                break
            assert output.limit_ua is not None and output.limit_ua <= {
                Zone.CHEEK_L: 200,
                Zone.UNDER_EYE_L: 120,
            }.get(zone, 0.0)
        assert agent.session_id is None and s == 30  # stopped at session_max_s
        agent.end_session(EndReason.USER)  # the user presses stop afterwards: nothing more happens
        await c.wait_for(lambda: any(isinstance(m, SessionEnd) for m in c.data()))
        end = next(m for m in c.data() if isinstance(m, SessionEnd))
        assert end.end_reason is EndReason.SAFETY_LIMIT
        await c.wait_for(lambda: len(events(c, EventType.INTERVENTION)) >= 4)
        got = [(e.detail, e.value) for e in events(c, EventType.INTERVENTION)]
        assert got == [
            ("zone_cap:cheek_l", 200.0),
            ("restricted_zone:forehead", 0.0),
            ("zone_cap:under_eye_l", 120.0),
            ("session_max_s", 30.0),
        ]
        assert all(e.session_id == end.session_id for e in events(c, EventType.INTERVENTION))
        assert output.limit_ua == 0.0

        # 30 active seconds used; the next session stops at the daily maximum (50 s)
        agent.start_session(1)
        for _ in range(40):
            clock.advance(1)
            agent.record(reading(clock.now(), Zone.CHEEK_L, 100.0))
            if agent.session_id is None:
                break
        assert agent.protocols.usage is not None and agent.protocols.usage.active_s == 50
        with pytest.raises(SessionRefused, match="session"):
            agent.start_session(1)  # sessions_per_day_max = 2
        await c.wait_for(lambda: len(events(c, EventType.SESSION_REFUSED)) == 1)
        assert events(c, EventType.SESSION_REFUSED)[0].detail == "sessions_per_day_max"
        # the user's local day (UTC+1) starts at 23:00 UTC
        clock.advance((start.replace(hour=23) - clock.now()).total_seconds())
        agent.start_session(1)
        agent.end_session(EndReason.USER)
        await agent.drained()
    ends = [m for m in c.data() if isinstance(m, SessionEnd)]
    assert [e.end_reason for e in ends] == [EndReason.SAFETY_LIMIT, EndReason.SAFETY_LIMIT, EndReason.USER]
    assert any(e.detail == "daily_active_max_s" for e in events(c, EventType.INTERVENTION))
