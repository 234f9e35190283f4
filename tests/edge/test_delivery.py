"""The end-to-end acknowledgement on a real broker: the outbox empties only as commit marks advance, a
PUBACK 0x10 (nobody subscribed: the broker dropped it) is not taken, uncovered messages go again after
the commit timeout with a backoff, a mark from the future is ignored, and ack_mode "broker" still deletes
on PUBACK. The cloud's marks come from a test peer (tests/edge/marker.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from edge.app import Agent
from edge.sensor import DemoSensor
from tests.edge.conftest import ThreadCollector, fast_config
from tests.edge.marker import CommitPeer
from tests.edge.test_agent import record_session
from tests.support.services import Mosquitto


async def until(condition: Callable[[], bool], deadline_s: float = 10.0) -> None:
    async with asyncio.timeout(deadline_s):
        while not condition():  # noqa: ASYNC110 - the agent's counters, polled under a deadline
            await asyncio.sleep(0.01)


async def test_the_outbox_empties_only_as_the_mark_advances(tmp_path: Path, marks: CommitPeer) -> None:
    marks.hold()  # the cloud has stored nothing yet
    cfg = fast_config(tmp_path, marks.url, commit_timeout_s=30.0, commit_timeout_max_s=60.0)
    async with Agent(cfg) as agent:
        record_session(agent, 25, DemoSensor(seed=1))  # start, 3 batches, end
        seqs = [r.seq for r in agent.outbox.peek(10)]
        assert len(seqs) == 5
        await until(lambda: agent.stats().sent == 5 and marks.has_every_seq({cfg.device_id: seqs[-1] + 1}))
        assert agent.stats().outbox_depth == 5 and agent.stats().committed == 0  # PUBACKed, still kept
        assert agent.link.stats.syncs == 1  # one after the connect
        marks.send_mark(cfg.device_id, seqs[2])
        await until(lambda: agent.stats().outbox_depth == 2)
        assert [r.seq for r in agent.outbox.peek(10)] == seqs[3:] and agent.stats().committed == 3
        assert agent.outbox.committed_through == seqs[2]
        marks.send_mark(cfg.device_id, seqs[0])  # an older mark changes nothing
        await until(lambda: agent.link.stats.marks == 2)
        assert agent.stats().outbox_depth == 2
        marks.release()
        async with asyncio.timeout(10):
            await agent.drained()
        assert agent.stats().committed == 5 and agent.link.stats.resent == 0


async def test_not_taken_with_nobody_subscribed_then_sent_again_and_committed(
    tmp_path: Path, broker: Mosquitto
) -> None:
    cfg = fast_config(tmp_path, broker.url, commit_timeout_s=0.3, commit_timeout_max_s=1.0)
    async with Agent(cfg) as agent:
        record_session(agent, 25, DemoSensor(seed=2))
        # no consumer: mosquitto acks 0x10 "no matching subscribers" and drops each message
        await until(lambda: agent.stats().not_taken >= 5)
        assert agent.stats().outbox_depth == 5 and agent.stats().sent == 0
        assert agent.link.stats.refused == 0  # 0x10 is not a refusal, and not taken either
        with CommitPeer(broker.url) as peer:  # the consumer comes back
            async with asyncio.timeout(10):
                await agent.drained()
            assert peer.syncs.get(cfg.device_id, 0) >= 1  # each re-send asks for the mark
        stats = agent.link.stats
        assert stats.committed == 5 and stats.sent >= 5 and stats.resent >= 5


async def test_uncovered_messages_go_again_with_a_doubling_timeout(tmp_path: Path, marks: CommitPeer) -> None:
    marks.hold()
    cfg = fast_config(tmp_path, marks.url, commit_timeout_s=0.2, commit_timeout_max_s=0.8)
    async with Agent(cfg) as agent:
        record_session(agent, 10, DemoSensor(seed=3))  # start, 1 batch, end
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await until(lambda: agent.link.commit_timeout == 0.8 and agent.link.stats.resent >= 3 * 3)
        # 0.2 + 0.4 + 0.8 s of real time at least before the third re-send; capped at 0.8 after
        assert loop.time() - t0 >= 1.2 and agent.link.commit_timeout == 0.8
        assert agent.stats().outbox_depth == 3 and agent.link.stats.syncs >= 4
        marks.release()
        async with asyncio.timeout(10):
            await agent.drained()
        assert agent.link.commit_timeout == 0.2  # a mark advanced: back to the start value


async def test_a_mark_from_the_future_is_ignored_and_the_agent_asks_again(
    tmp_path: Path, marks: CommitPeer
) -> None:
    marks.hold()
    cfg = fast_config(tmp_path, marks.url, commit_timeout_s=30.0, commit_timeout_max_s=60.0)
    async with Agent(cfg) as agent:
        record_session(agent, 10, DemoSensor(seed=4))
        await until(lambda: agent.stats().sent == 3)
        syncs = agent.link.stats.syncs
        marks.send_mark(cfg.device_id, agent.outbox.next_seq)  # an earlier life of this device id
        await until(lambda: agent.link.stats.marks_ignored == 1 and agent.link.stats.syncs == syncs + 1)
        assert agent.stats().outbox_depth == 3 and agent.outbox.committed_through == -1
        marks.release()
        async with asyncio.timeout(10):
            await agent.drained()


async def test_a_filling_outbox_asks_for_its_mark(tmp_path: Path, marks: CommitPeer) -> None:
    marks.hold()
    cfg = fast_config(
        tmp_path,
        marks.url,
        outbox_max_rows=40,
        sync_fill_ratio=0.5,
        commit_timeout_s=30.0,
        commit_timeout_max_s=60.0,
    )
    async with Agent(cfg) as agent:
        record_session(agent, 100, DemoSensor(seed=6), end=False)  # start + 10 batches: below half
        await until(lambda: agent.stats().sent == 11)
        assert agent.link.stats.syncs == 1  # the connect's only
        record_session(agent, 100, DemoSensor(seed=7), end=False)  # 21 rows >= 20, sent rows waiting
        await until(lambda: agent.link.stats.syncs == 2)
        record_session(agent, 50, DemoSensor(seed=8))
        await until(lambda: agent.stats().sent == 27)
        assert agent.link.stats.syncs == 2  # at most one per commit timeout
        marks.release()
        async with asyncio.timeout(10):
            await agent.drained()


async def test_broker_mode_deletes_on_puback_and_keeps_what_is_not_taken(
    tmp_path: Path, broker: Mosquitto
) -> None:
    cfg = fast_config(tmp_path, broker.url, ack_mode="broker", commit_timeout_s=0.3, commit_timeout_max_s=1.0)
    async with Agent(cfg) as agent:
        record_session(agent, 10, DemoSensor(seed=5))
        await until(lambda: agent.stats().not_taken >= 3)  # nobody subscribed: kept, even on a bare broker
        assert agent.stats().outbox_depth == 3
        collector = ThreadCollector(broker.url, f"mf/v1/{cfg.device_id}/up/#")
        try:
            async with asyncio.timeout(10):
                await agent.drained()  # sent again after the timeout, taken, deleted on PUBACK
            await collector.wait_for(lambda: len({p for t, p in collector.raw if "/status" not in t}) == 3)
        finally:
            collector.close()
        stats = agent.link.stats
        assert stats.sent == 3 and stats.committed == 0 and stats.syncs == 0 and collector.syncs == 0
