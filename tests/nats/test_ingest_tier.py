"""The NATS tier end to end: real edge agents speaking MQTT 3.1.1 to the MQTT gateways of a real three-node
NATS cluster, `microfleet nats setup` creating the durable, two real `python -m cloud.ingest` processes
sharing that one JetStream durable on `$MQTT_msgs`, commit marks going back through a gateway, and a
scratch PostgreSQL database. Under each fault, every sequence number every agent put in its outbox is
stored exactly once, and the outboxes empty only as the commit marks advance (docs/decisions/nats-tier.md).

- happy path: no fault;
- SIGKILL the node leading `$MQTT_msgs` during traffic (the gateways stall while it elects a new leader;
  fetches answer 503 or time out);
- SIGKILL the node two agents are connected to: they move to the next node of their URL list and re-send
  what no commit mark covers;
- SIGKILL an ingest process and restart it: what it held unacknowledged comes back after ack_wait.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud.db.migrate import migrate
from tests.edge.conftest import fast_config
from tests.nats.marks import requires_nats_server
from tests.support.fleet import AgentFleet, Ingest, check_exactly_once
from tests.support.nats import NatsCluster, nats_setup

pytestmark = [
    pytest.mark.slow,
    requires_nats_server,
]
DEVICES = 4
SAMPLES_PER_MESSAGE = 5
MESSAGE_GAP_S = 0.05  # per agent: ~20 messages/s each
ACK_WAIT_S = 5  # a message a killed ingest held comes back this soon
DRAIN_TIMEOUT_S = 90.0  # as tests/e2e: under a loaded suite a drain once took over 60 s


@dataclass
class Tier:
    cluster: NatsCluster
    ingest: Ingest
    dsn: str
    tmp_path: Path

    def setup_durable(self) -> str:
        """`microfleet nats setup`, as a deployment runs it before the devices connect."""
        return nats_setup(self.cluster, "--ack-wait-s", str(ACK_WAIT_S))


@pytest.fixture
def tier(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tier]:
    migrate(database_url)
    with NatsCluster.started(tmp_path / "nats") as cluster:
        # every ingest process reads from any node (nats-py moves between them) ...
        monkeypatch.setenv("MICROFLEET_NATS_URL", ",".join(cluster.nats_urls()))
        ingest = Ingest(database_url, cluster.mqtt_url(0), tmp_path)  # ... and sends marks via a gateway
        try:
            yield Tier(cluster, ingest, database_url, tmp_path)
        finally:
            ingest.close()


def gateway_urls(cluster: NatsCluster, first: int) -> str:
    """Every node's gateway, starting with `first`: the agent moves to the next after a lost connection."""
    n = len(cluster.nodes)
    return ",".join(cluster.mqtt_url((first + k) % n) for k in range(n))


def nats_fleet(tier: Tier, homes: list[int]) -> AgentFleet:
    """Real agents in MQTT 3.1.1 mode, agent i first connecting to node homes[i]."""
    configs = []
    for i, home in enumerate(homes):
        device_id = f"nats-{i:02d}"  # no '.': nats-server 2.9.10 refuses it in MQTT topics
        configs.append(
            fast_config(
                tier.tmp_path / device_id,
                gateway_urls(tier.cluster, home),
                device_id=device_id,
                mqtt_version="3.1.1",
                samples_per_batch=SAMPLES_PER_MESSAGE,
                session_expiry_s=600,
                connect_timeout_s=5.0,
                commit_timeout_s=3.0,
                commit_timeout_max_s=9.0,
            )
        )
    return AgentFleet(configs, samples_per_message=SAMPLES_PER_MESSAGE, message_gap_s=MESSAGE_GAP_S)


async def run_with_fault(
    t: Tier, fault: Callable[[AgentFleet], Awaitable[None]], *, homes: list[int], consumers: int = 2
) -> AgentFleet:
    for i in range(1, consumers + 1):
        t.ingest.start(i)
    for i in range(1, consumers + 1):
        await asyncio.to_thread(t.ingest.wait_subscribed, i)
    try:
        async with nats_fleet(t, homes).running() as fleet:
            async with asyncio.timeout(30):
                for d in fleet.devices:
                    await d.agent.link.connected.wait()
            await asyncio.sleep(1.5)  # traffic flows before the fault
            await fault(fleet)
            await asyncio.sleep(1.5)  # and after it
            await fleet.stop_traffic()
            await fleet.committed(DRAIN_TIMEOUT_S)
            await asyncio.to_thread(check_exactly_once, t.dsn, fleet)
            for d in fleet.devices:
                assert d.agent.link.stats.committed > 0  # the marks emptied the outboxes, not PUBACKs
        return fleet
    except BaseException:
        print(t.ingest.logs())
        raise


async def test_happy_path_two_ingest_processes_share_one_durable(tier: Tier) -> None:
    out = await asyncio.to_thread(tier.setup_durable)
    assert "durable ingest on $MQTT_msgs: created" in out
    again = await asyncio.to_thread(tier.setup_durable)  # idempotent: a second deployment run
    assert "durable ingest on $MQTT_msgs: exists" in again

    async def no_fault(_fleet: AgentFleet) -> None:
        await asyncio.sleep(1.0)

    await run_with_fault(tier, no_fault, homes=[0, 1, 2, 1])
    for i in (1, 2):  # a clean stop: fetch no more, commit and ack what is held
        await asyncio.to_thread(tier.ingest.signal, i, signal.SIGTERM)
    for i in (1, 2):  # both processes took a share of the one durable
        log = (tier.tmp_path / f"ingest-{i}.log").read_text()
        assert f"ingest-{i} subscribed to $MQTT_msgs durable ingest" in log
        stopped = re.search(rf"ingest ingest-{i} stopped \(left the group\): messages=(\d+)", log)
        assert stopped is not None, log[-2000:]
        assert int(stopped.group(1)) > 0


async def test_sigkill_the_stream_leader_during_traffic(tier: Tier) -> None:
    await asyncio.to_thread(tier.setup_durable)
    leader = tier.cluster.wait_stream_leader("$MQTT_msgs")
    victim = tier.cluster.index(leader)
    others = [n.index for n in tier.cluster.nodes if n.index != victim]
    tier.ingest.mqtt_url = tier.cluster.mqtt_url(others[0])  # the marks' gateway survives

    async def kill_leader(_fleet: AgentFleet) -> None:
        await asyncio.to_thread(tier.cluster.kill, victim)
        new = await asyncio.to_thread(tier.cluster.wait_stream_leader, "$MQTT_msgs", not_on=leader)
        assert new != leader

    # the agents sit on the surviving nodes: the leader's loss alone is the fault
    await run_with_fault(tier, kill_leader, homes=[others[0], others[1], others[0], others[1]])


async def test_sigkill_the_node_agents_are_connected_to(tier: Tier) -> None:
    await asyncio.to_thread(tier.setup_durable)
    victim = 2
    tier.ingest.mqtt_url = tier.cluster.mqtt_url(0)

    homes = [victim, victim, 0, 1]

    async def kill_home(fleet: AgentFleet) -> None:
        before = [d.agent.link.stats.connects for d in fleet.devices]
        await asyncio.to_thread(tier.cluster.kill, victim)
        async with asyncio.timeout(30):  # the agents of node 2 come back through node 0's gateway
            while not all(  # noqa: ASYNC110 - link stats have no event of their own
                d.agent.link.stats.connects > before[i] and d.agent.link.connected.is_set()
                for i, d in enumerate(fleet.devices)
                if homes[i] == victim
            ):
                await asyncio.sleep(0.1)

    await run_with_fault(tier, kill_home, homes=homes)


async def test_sigkill_an_ingest_process_its_held_messages_come_back(tier: Tier) -> None:
    await asyncio.to_thread(tier.setup_durable)

    async def kill_ingest(_fleet: AgentFleet) -> None:
        await asyncio.to_thread(tier.ingest.signal, 1, signal.SIGKILL)  # what it held is not acked ...
        await asyncio.sleep(0.7)
        tier.ingest.start(1)  # ... and JetStream hands it out again after ack_wait (5 s here)

    await run_with_fault(tier, kill_ingest, homes=[0, 1, 2, 0])


async def test_sigkill_the_node_behind_the_marks_publisher(tier: Tier) -> None:
    """Ingest's commit marks go out through the gateways of MICROFLEET_MQTT_URL, the victim first: when
    it dies the publisher moves to the next node (cloud.runtime.mqtt) and the marks keep flowing."""
    await asyncio.to_thread(tier.setup_durable)
    victim = 1
    tier.ingest.mqtt_url = gateway_urls(tier.cluster, victim)

    async def kill_marks_node(_fleet: AgentFleet) -> None:
        await asyncio.to_thread(tier.cluster.kill, victim)

    # the agents sit on the other nodes: the publisher's loss is the fault (and nothing restarts the node)
    await run_with_fault(tier, kill_marks_node, homes=[0, 2, 0, 2])
    moved = f"reconnecting to 127.0.0.1:{tier.cluster.mqtt_port((victim + 1) % 3)}"
    for i in (1, 2):
        log = (tier.tmp_path / f"ingest-{i}.log").read_text()
        assert f"ingest-{i}-marks disconnected from 127.0.0.1:{tier.cluster.mqtt_port(victim)}" in log
        assert moved in log, log[-3000:]
