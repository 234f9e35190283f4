"""The alert engine on the NATS tier: a real `alerts run` process reading its own JetStream durable
(`alerts`, made by `microfleet nats setup` beside `ingest`) on a real three-node cluster, a real ingest
process on the `ingest` durable, and a real edge agent speaking MQTT 3.1.1 to a third node's gateway.

The agent uses its device on six days in a row (its clock moved a day between sessions, the last one
today): rule O5 (days of use per week) raises its alert from that traffic, the engine sends the notice
through another node's gateway, the agent shows it and the user acknowledges it: the NOTICE_ACK event
goes up through the gateway, JetStream and the engine's durable, and lands in the notice's row. Ingest
stored every session meanwhile and its commit marks emptied the outbox: each durable got every message.

`o5_through_the_tier` runs the scenario in either alert feed mode (MICROFLEET_ALERT_FEED on setup, ingest
and the engine); tests/nats/test_alert_feed_tier.py runs it in committed mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloud.db.migrate import migrate
from contract.messages import EndReason
from edge.app import Agent
from edge.clock import ManualClock
from edge.sensor import DemoSensor
from tests.cloud.test_alerts_engine_support import query, wait_for
from tests.edge.conftest import fast_config
from tests.nats.marks import requires_nats_server
from tests.support.fleet import Ingest
from tests.support.nats import NatsCluster, nats_setup
from tests.support.services import ROOT

pytestmark = [
    pytest.mark.slow,
    requires_nats_server,
]
DAYS = 6  # sessions on 6 days of the last 7: O5 (5 days a week in the intensive phase) raises
DEVICE = "nats-alert-01"


class AlertEngine:
    """One real `python -m cloud.alerts run` process on the NATS tier."""

    def __init__(self, dsn: str, nats_url: str, gateway: str, logdir: Path, feed: str = "uplinks") -> None:
        self.log = logdir / "alerts-1.log"
        # the durable it reads: its own on device traffic, or the alert feed's (cloud.alerts.feed_source)
        self.durable = "alerts" if feed == "uplinks" else "alerts-feed"
        env = {
            **os.environ,
            "MICROFLEET_DATABASE_URL": dsn,
            "MICROFLEET_NATS_URL": nats_url,
            "MICROFLEET_MQTT_URL": gateway,
            "MICROFLEET_ALERT_QUIET_START": "00:00",  # no quiet hours: the notice goes out at once
            "MICROFLEET_ALERT_QUIET_END": "00:00",
            "MICROFLEET_ALERT_BATCH_MAX_DELAY_S": "0.02",
            "MICROFLEET_ALERT_FEED": feed,
            "PYTHONPATH": str(ROOT),
        }
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cloud.alerts", "run", "--no-gate", "--consumer-id", "alerts-1"],
                env=env,
                stdout=out,
                stderr=out,
            )

    def wait_subscribed(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while f"alerts-1 subscribed to $MQTT_msgs durable {self.durable} (" not in self.log.read_text():
            assert self.proc.poll() is None, f"alerts run exited:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"alerts run did not subscribe:\n{self.log.read_text()}"
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster.started(tmp_path / "nats") as c:
        yield c


async def test_an_alert_from_agent_traffic_reaches_the_agent_through_the_gateway(
    cluster: NatsCluster, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = await o5_through_the_tier(cluster, tmp_path, database_url, monkeypatch, feed="uplinks")
    assert "durable ingest on $MQTT_msgs: created" in out
    assert "durable alerts on $MQTT_msgs: created" in out
    assert "alerts-feed" not in out


async def o5_through_the_tier(
    cluster: NatsCluster, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, *, feed: str
) -> str:
    """The module's scenario with MICROFLEET_ALERT_FEED=`feed` on setup, ingest and the engine; both
    processes stopped cleanly at the end. Returns setup's output."""
    migrate(database_url)
    out = await asyncio.to_thread(nats_setup, cluster, env={"MICROFLEET_ALERT_FEED": feed})

    urls = ",".join(cluster.nats_urls())
    monkeypatch.setenv("MICROFLEET_NATS_URL", urls)  # read by the ingest processes Ingest starts
    monkeypatch.setenv("MICROFLEET_ALERT_FEED", feed)
    ingest = Ingest(database_url, cluster.mqtt_url(0), tmp_path)  # marks through node 0's gateway
    engine = AlertEngine(database_url, urls, cluster.mqtt_url(1), tmp_path, feed)  # notices via node 1
    try:
        ingest.start(1)
        await asyncio.to_thread(ingest.wait_subscribed, 1)
        await asyncio.to_thread(engine.wait_subscribed)

        now = datetime.now(UTC)
        clock = ManualClock(now - timedelta(days=DAYS - 1, minutes=10))
        cfg = fast_config(
            tmp_path / DEVICE,
            cluster.mqtt_url(2),  # the agent sits on the third node
            device_id=DEVICE,
            mqtt_version="3.1.1",
            samples_per_batch=5,
            session_expiry_s=600,
            commit_timeout_s=3.0,
        )
        sensor = DemoSensor(seed=7)
        async with Agent(cfg, clock=clock) as agent:
            async with asyncio.timeout(30):
                await agent.link.connected.wait()
            for day in range(DAYS):
                if day:
                    clock.advance(24 * 3600.0)
                agent.start_session(2)
                for _ in range(20):
                    clock.advance(1.0)
                    agent.record(sensor.read(clock.now(), 2))
                agent.end_session(EndReason.USER)
                await asyncio.sleep(0.05)

            async with asyncio.timeout(30):  # the notice came down through node 1 -> node 2
                while not agent.notices.notices:  # noqa: ASYNC110 - the board has no event of its own
                    await asyncio.sleep(0.05)
            [notice] = [n for n in agent.notices.notices if n.rule_id == "O5"][:1]
            agent.notices.acknowledge(notice.notice_id)  # NOTICE_ACK: up through the gateway again

            async with asyncio.timeout(60):
                await agent.drained()  # ingest's commit marks emptied the outbox
            assert agent.link.stats.committed > 0

        rows = query(
            database_url,
            "select rule_id, state from alerts where device_id = %s and rule_id = 'O5'",
            DEVICE,
        )
        assert rows and all(state == "open" for _, state in rows), rows
        acked = await asyncio.to_thread(
            wait_for,
            lambda: query(
                database_url,
                "select sent_at, shown_at, acked_at from notice_outbox where notice_id = %s",
                notice.notice_id,
            )[0][2],
            20.0,
            "the agent's NOTICE_ACK recorded by the engine",
        )
        assert acked is not None
        sessions = query(database_url, "select count(*) from sessions where device_id = %s", DEVICE)
        assert sessions[0][0] == DAYS  # ingest got every session from its own durable
        assert f"durable {engine.durable} (" in engine.log.read_text()
    except BaseException:
        print(ingest.logs())
        with contextlib.suppress(OSError):
            print(engine.log.read_text()[-4000:])
        raise
    finally:
        ingest.close()
        engine.close()
    return out
