"""The agent against a real mosquitto: delivery, birth and will, broker restart, agent restart. The cloud's
commit marks come from the test peer (`marks`, tests/edge/marker.py): outboxes empty only as marks cover
them (ack_mode "committed", the default)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from contract.messages import DeviceState, EndReason, SampleBatch, SessionEnd, SessionStart, Status
from edge.app import Agent
from edge.clock import SystemClock
from edge.sensor import DemoSensor
from tests.edge.conftest import Collector, fast_config
from tests.edge.marker import CommitPeer
from tests.support.services import Mosquitto, TcpProxy

Collect = Callable[[str, str], AbstractAsyncContextManager[Collector]]


def record_session(agent: Agent, seconds: int, sensor: DemoSensor, *, end: bool = True) -> None:
    clock = SystemClock()
    if agent.session_id is None:
        agent.start_session(3)
    for _ in range(seconds):
        agent.record(sensor.read(clock.now(), agent.level or 3))
    if end:
        agent.end_session(EndReason.USER)


def assert_complete(c: Collector, stored: int) -> None:
    """Every stored message arrived; any duplicate is byte-identical (QoS 1 redelivery)."""
    by_seq: dict[int, bytes] = {}
    for _, payload, m in c.received:
        if isinstance(m, Status):
            continue
        assert by_seq.setdefault(m.seq, payload) == payload
    assert len(by_seq) == stored


async def test_messages_arrive_decoded_with_a_retained_birth(
    tmp_path: Path, broker: Mosquitto, collect: Collect, marks: CommitPeer
) -> None:
    cfg = fast_config(tmp_path, broker.url)
    async with collect(broker.url, cfg.device_id) as c, Agent(cfg) as agent:
        record_session(agent, 25, DemoSensor(seed=1))
        async with asyncio.timeout(10):
            await agent.drained()
        await c.wait_for(lambda: len(c.data()) == 5)
        kinds = [type(m) for m in c.data()]
        assert kinds == [SessionStart, SampleBatch, SampleBatch, SampleBatch, SessionEnd]
        assert sum(len(m.samples) for m in c.data() if isinstance(m, SampleBatch)) == 25
        seqs = [m.seq for m in c.messages()]
        assert len(set(seqs)) == len(seqs)
        assert agent.stats().outbox_depth == 0 and agent.stats().committed == 5  # by the marks
    # a newcomer sees the retained status: offline after the clean shutdown, with the birth's seq
    async with collect(broker.url, cfg.device_id) as late:
        await late.wait_for(lambda: bool(late.statuses()))
        status = late.statuses()[-1]
        assert status.state is DeviceState.OFFLINE
        assert status.seq == c.statuses()[0].seq and c.statuses()[0].state is DeviceState.ONLINE


async def test_will_on_lost_connection_then_reconnect_and_deliver(
    tmp_path: Path, broker: Mosquitto, collect: Collect, marks: CommitPeer
) -> None:
    proxy = TcpProxy(broker.port)
    cfg = fast_config(tmp_path, f"mqtt://127.0.0.1:{proxy.port}")
    sensor = DemoSensor(seed=2)
    try:
        async with collect(broker.url, cfg.device_id) as c, Agent(cfg) as agent:
            async with asyncio.timeout(10):
                await agent.link.connected.wait()
            await c.wait_for(lambda: any(s.state is DeviceState.ONLINE for s in c.statuses()))
            proxy.cut()
            await c.wait_for(lambda: c.statuses()[-1].state is DeviceState.OFFLINE)
            record_session(agent, 30, sensor)  # recorded while offline: kept in the outbox
            assert agent.stats().outbox_depth == 5
            proxy.heal()
            async with asyncio.timeout(15):
                await agent.drained()
            await c.wait_for(lambda: len({m.seq for m in c.data()}) == 5)
            assert c.statuses()[-1].state is DeviceState.ONLINE
            assert_complete(c, agent.stats().stored)
            assert agent.stats().connects >= 2
    finally:
        proxy.close()


async def test_broker_restart_mid_stream_loses_nothing(
    tmp_path: Path, broker: Mosquitto, collect: Collect, marks: CommitPeer
) -> None:
    cfg = fast_config(tmp_path, broker.url)
    sensor = DemoSensor(seed=3)
    async with collect(broker.url, cfg.device_id) as c, Agent(cfg) as agent:
        record_session(agent, 100, sensor, end=False)
        await c.wait_for(lambda: len(c.data()) >= 3)
        broker.stop()
        record_session(agent, 100, sensor, end=False)  # while the broker is down
        broker.start()
        record_session(agent, 50, sensor)
        async with asyncio.timeout(20):
            await agent.drained()
        stored = agent.stats().stored
        await c.wait_for(lambda: len({m.seq for m in c.data()}) >= stored, deadline_s=20)
        assert_complete(c, stored)
        assert agent.stats().connects >= 2
        samples = {s.t for m in c.data() if isinstance(m, SampleBatch) for s in m.samples}
        assert len(samples) == 250


async def test_agent_restart_continues_seq_and_sends_unsent_rows(
    tmp_path: Path, broker: Mosquitto, collect: Collect, marks: CommitPeer
) -> None:
    proxy = TcpProxy(broker.port)
    proxy.cut()
    cfg = fast_config(tmp_path, f"mqtt://127.0.0.1:{proxy.port}")
    try:
        async with collect(broker.url, cfg.device_id) as c:
            async with Agent(cfg) as agent:
                record_session(agent, 40, DemoSensor(seed=4))
                first = agent.stats()
                last_seq = agent.outbox.next_seq - 1
            assert first.outbox_depth == 6 and first.sent == 0
            proxy.heal()
            async with Agent(cfg) as agent:
                assert agent.outbox.depth == 6
                record_session(agent, 10, DemoSensor(seed=5))
                async with asyncio.timeout(15):
                    await agent.drained()
            await c.wait_for(lambda: len({m.seq for m in c.data()}) == 6 + 3)
            data = c.data()
            assert_complete(c, 9)
            new = [m for m in data if m.seq > last_seq]
            assert len(new) == 3 and all(isinstance(m, (SessionStart, SampleBatch, SessionEnd)) for m in new)
    finally:
        proxy.close()


async def test_downlinks_reach_their_handler_and_a_failing_one_does_not_stop_others(
    tmp_path: Path, broker: Mosquitto
) -> None:
    import aiomqtt

    cfg = fast_config(tmp_path, broker.url)
    got: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=10)

    async def notice(topic: str, payload: bytes) -> None:
        await got.put((topic, payload))

    async def broken(topic: str, payload: bytes) -> None:
        raise RuntimeError("handler bug")

    agent = Agent(cfg)
    agent.on_downlink("notice", notice)
    agent.on_downlink("protocol", broken)
    async with agent:
        async with asyncio.timeout(10):
            await agent.link.connected.wait()
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            await pub.publish(f"mf/v1/{cfg.device_id}/down/protocol", b"{}", qos=1)
            await pub.publish(f"mf/v1/{cfg.device_id}/down/notice", b'{"text":"hi"}', qos=1)
        async with asyncio.timeout(10):
            topic, payload = await got.get()
        assert topic.endswith("/down/notice") and payload == b'{"text":"hi"}'


async def test_overflow_is_counted_reported_and_in_the_birth(
    tmp_path: Path, broker: Mosquitto, collect: Collect, marks: CommitPeer
) -> None:
    from contract.messages import DeviceEvent, EventType

    proxy = TcpProxy(broker.port)
    proxy.cut()
    cfg = fast_config(tmp_path, f"mqtt://127.0.0.1:{proxy.port}", outbox_max_rows=20)
    try:
        async with collect(broker.url, cfg.device_id) as c, Agent(cfg) as agent:
            record_session(agent, 300, DemoSensor(seed=6))  # 1 + 30 + 1 messages into 20 rows
            assert agent.stats().outbox_depth == 20
            dropped = agent.stats().outbox_dropped
            assert dropped == 1 + 30 + 1 + 1 - 20  # +1: the overflow event itself
            proxy.heal()
            async with asyncio.timeout(15):
                await agent.drained()
            # the drops leave a seq gap: the mark passes it when the agent reports its floor, on its
            # commit timeout (and re-sends what was above the gap: duplicates, same bytes)
            await c.wait_for(lambda: len({m.seq for m in c.data()}) == 20)
            assert_complete(c, 20)
            data = sorted({m.seq: m for m in c.data()}.values(), key=lambda m: m.seq)
            kinds = [type(m).__name__ for m in data]
            assert kinds[0] == "SessionStart" and kinds[-1] == "SessionEnd"  # protected kinds survive
            [event] = [m for m in data if isinstance(m, DeviceEvent)]
            assert (
                event.event is EventType.OUTBOX_OVERFLOW and event.value == 1.0
            )  # first drop reported at once
            assert c.statuses()[0].outbox_dropped == dropped
    finally:
        proxy.close()
