"""A device whose downlink subscription is refused does not sit deaf on a healthy-looking connection: the
SUBACK's reason code (>= 0x80) ends the connection and the agent retries until the broker grants it. Found
by a load test on the NATS gateway, where a device without its subscription never got its commit marks
and sent its data again and again. Here the refusal is real: the production broker's dynamic security
with a role that denies the device its own `down/#`, then the role removed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloud.identity.dynsec import DynsecClient
from edge.app import Agent
from tests.edge.conftest import fast_config
from tests.support.services import ADMIN_PASSWORD, ProductionBroker

DEVICE = "deaf-dev-1"
DENY = "deny-down-test"


async def wait_until(predicate: object, timeout_s: float, what: str) -> None:
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("mqtt_version", ["5", "3.1.1"])
async def test_a_refused_downlink_subscription_ends_the_connection_until_granted(
    tmp_path: Path, prod: ProductionBroker, mqtt_version: str
) -> None:
    url = prod.device(DEVICE)
    with DynsecClient(prod.url, "admin", ADMIN_PASSWORD) as admin:
        admin.run(
            [
                {
                    "command": "createRole",
                    "rolename": DENY,
                    "acls": [
                        {"acltype": "subscribePattern", "topic": "mf/v1/+/down/#", "priority": 1000,
                         "allow": False},
                    ],
                },
                {"command": "addClientRole", "username": DEVICE, "rolename": DENY, "priority": 1000},
            ]
        )  # fmt: skip
    cfg = fast_config(tmp_path, url, DEVICE, mqtt_version=mqtt_version)
    async with Agent(cfg) as agent:
        link = agent.link
        await wait_until(lambda: link.stats.subscribe_refused >= 2, 15, "two refused SUBACKs")
        assert not agent.stats().connected, "a deaf connection must not count as connected"
        assert link.stats.connects >= 2  # retried, with backoff
        with DynsecClient(prod.url, "admin", ADMIN_PASSWORD) as admin:
            admin.run([{"command": "removeClientRole", "username": DEVICE, "rolename": DENY}])
        await wait_until(
            lambda: agent.stats().connected, 15, "the connection once the subscription is granted"
        )
