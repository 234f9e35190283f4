"""The API's /metrics counts protocol publishes (POST /protocols) and the downlinks they sent: publishing
is an API (and CLI) action, not a service of its own, so the API is where Prometheus finds it."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from cloud.api.models import Role
from cloud.config import CloudConfig
from cloud.protocols import api as protocols_api
from contract.protocol import starter_protocol
from contract.signing import SigningKey
from tests.cloud.test_api_support import execute, migrated_database, mint, serve
from tests.support.services import Mosquitto

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def figures(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_protocol_publishes_and_pushes_are_counted(broker: Mosquitto) -> None:
    with migrated_database() as dsn, serve(CloudConfig(database_url=dsn, mqtt_url=broker.url)) as api:
        api.app.include_router(protocols_api.router)
        api.app.state.signing_key = SigningKey.generate()
        execute(
            dsn,
            "insert into devices (device_id, model, state, tags) values (%s, %s, %s, %s)",
            [("m-1", "mf-home-1", "online", ["m"]), ("m-2", "mf-home-1", "offline", ["m"])],
        )
        good = msgspec.to_builtins(msgspec.structs.replace(starter_protocol(NOW), protocol_id="m-p"))
        bad = msgspec.to_builtins(
            msgspec.structs.replace(
                starter_protocol(NOW), protocol_id="m-q", level_current_ua=(80.0, 160.0, 240.0, 320.0, 450.0)
            )
        )
        with api.client(mint(dsn, Role.OPERATOR)) as http:
            assert http.post("/protocols", json={"protocol": good, "to_tags": ["m"]}).status_code == 201
            assert http.post("/protocols", json={"protocol": bad, "to_tags": ["m"]}).status_code == 422
            f = figures(http.get("/metrics").text)
    assert f[("microfleet_protocol_publishes_total", (("outcome", "sent"),))] == 1
    assert f[("microfleet_protocol_publishes_total", (("outcome", "refused"),))] == 1
    assert f[("microfleet_protocol_pushes_total", (("outcome", "sent"),))] == 2
