"""An agent whose messages the broker refuses (ACL) keeps them: nothing is deleted without a real PUBACK."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cloud.identity import provision
from cloud.identity.dynsec import DynsecClient
from cloud.identity.policy import device_role
from contract.messages import EndReason, SampleBatch
from edge.app import Agent
from edge.clock import SystemClock
from edge.sensor import DemoSensor
from tests.edge.conftest import ThreadCollector, fast_config
from tests.support.services import secure_broker


async def test_refused_publishes_stay_in_the_outbox_until_allowed(tmp_path: Path) -> None:
    broker = secure_broker("admin-pw")
    broker.start()
    try:
        with DynsecClient(broker.url, "admin", "admin-pw") as admin:
            provision.bootstrap(admin)
            creds = provision.provision_device(admin, "dev-acl", broker.url)
            watcher = provision.provision_service(admin, "watch", "svc-ingest", broker.url)
            # an operator mistake: the device may not send samples
            deny = {"acltype": "publishClientSend", "topic": "mf/v1/dev-acl/up/samples"}
            admin.run(
                [
                    {
                        "command": "addRoleACL",
                        "rolename": device_role("dev-acl"),
                        **deny,
                        "allow": False,
                        "priority": 100,
                    }
                ]
            )
            cfg = fast_config(tmp_path, creds.url_with_secret(), device_id="dev-acl", ack_mode="broker")
            collector = ThreadCollector(watcher.url_with_secret(), "$share/ingest/mf/v1/+/up/#")
            clock, sensor = SystemClock(), DemoSensor(seed=7)
            try:
                async with Agent(cfg) as agent:
                    agent.start_session(2)
                    for _ in range(20):
                        agent.record(sensor.read(clock.now(), 2))
                    agent.end_session(EndReason.USER)
                    async with asyncio.timeout(10):
                        while agent.link.stats.refused < 2 or agent.stats().outbox_depth != 2:  # noqa: ASYNC110 - a counter, no event
                            await asyncio.sleep(0.02)
                    # start and end went through; the two refused sample batches are still kept
                    assert agent.stats().outbox_depth == 2
                    assert not any(isinstance(m, SampleBatch) for m in collector.messages())
                # the ACL is fixed; the agent comes back with the same outbox and delivers the rest
                admin.run([{"command": "removeRoleACL", "rolename": device_role("dev-acl"), **deny}])
                async with Agent(cfg) as agent:
                    async with asyncio.timeout(10):
                        await agent.drained()
                await collector.wait_for(
                    lambda: (
                        sum(len(m.samples) for m in collector.messages() if isinstance(m, SampleBatch)) == 20
                    )
                )
            finally:
                collector.close()
    finally:
        broker.close()
