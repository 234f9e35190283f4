"""Bad input, tried for real: random, truncated, oversized, deeply nested and wrongly typed payloads go
through the real broker to the ingest and alert consumers while valid traffic flows. Every bad message is
quarantined with a reason, no consumer dies, and every valid message is stored."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench._common import Publisher, fleet_traffic
from cloud.alerts.service import AlertService
from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from cloud.ingest.service import IngestService
from contract.errors import Reason
from tests.cloud.test_alerts_engine_support import engine_config
from tests.support.services import Mosquitto

pytestmark = pytest.mark.slow
KINDS = ("session_start", "samples", "session_end", "event", "status", "ota")
_ids = itertools.count()


@dataclass
class Platform:
    dsn: str
    broker: Mosquitto
    ingest: IngestService
    alerts: AlertService
    publisher: Publisher


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    from tests.support.services import scratch_database

    broker = Mosquitto()
    broker.start()
    try:
        with scratch_database("mf_fuzz") as dsn:
            migrate(dsn)
            cfg = CloudConfig(database_url=dsn, mqtt_url=broker.url, consumer_id="fuzz-ingest")
            ingest = IngestService(cfg, housekeeping=False, late_horizon=timedelta(days=30))
            ingest.start()
            alerts = AlertService(engine_config(broker.url, dsn, consumer_id="fuzz-alerts"))
            alerts.__enter__()
            publisher = Publisher(broker.url, client_id="fuzz-pub")
            try:
                yield Platform(dsn, broker, ingest, alerts, publisher)
            finally:
                publisher.close()
                alerts.__exit__(None, None, None)
                ingest.stop()
    finally:
        broker.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def bad_payload(draw: st.DrawFn, valid: bytes) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "oversized", "nested", "retyped", "not_object"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "oversized":  # over the contract's 64 KiB, under the broker's 256 KiB packet limit
        return b'{"kind":"samples","pad":"' + b"x" * draw(st.integers(66_000, 200_000)) + b'"}'
    if kind == "nested":
        depth = draw(st.integers(500, 20_000))
        return b"[" * depth + b"]" * depth
    body = json.loads(valid)
    if kind == "retyped":
        field = draw(st.sampled_from(sorted(body)))
        body[field] = draw(json_values.filter(lambda v: v != body[field]))
        return json.dumps(body).encode()
    return json.dumps(draw(json_values.filter(lambda v: not isinstance(v, dict)))).encode()


def wait(predicate: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def rows(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_payloads_are_quarantined_and_valid_traffic_all_stored(
    platform: Platform, data: st.DataObject
) -> None:
    n = next(_ids)
    valid = fleet_traffic(4, prefix=f"fz{n}-ok").messages
    template = valid[1][1]  # a valid samples message to mutate
    bad: list[tuple[str, bytes]] = []
    for i in range(data.draw(st.integers(5, 25), label="bad messages")):
        kind = data.draw(st.sampled_from(KINDS), label="topic kind")
        payload = data.draw(bad_payload(template), label="payload")
        bad.append((f"mf/v1/fz{n}-bad-{i}/up/{kind}", payload))
    mixed = [m for pair in itertools.zip_longest(valid, bad) for m in pair if m is not None]
    platform.publisher.publish_all(mixed)

    # every valid message is stored exactly once, while the bad ones flowed through the same consumers
    wait(
        lambda: (
            rows(platform.dsn, "SELECT count(*) FROM uplink_log WHERE device_id LIKE %s", f"fz{n}-ok-%")[0][0]
            == len(valid)
        ),
        "the valid traffic",
    )
    # every bad message is in quarantine with a reason of the contract, raw bytes kept
    wait(
        lambda: (
            rows(platform.dsn, "SELECT count(*) FROM quarantine WHERE topic LIKE %s", f"mf/v1/fz{n}-bad-%")[
                0
            ][0]
            == len(set(bad))
        ),
        "every bad message quarantined",
    )
    stored = rows(
        platform.dsn,
        "SELECT topic, payload, reason FROM quarantine WHERE topic LIKE %s",
        f"mf/v1/fz{n}-bad-%",
    )
    assert {(t, bytes(p)) for t, p, _ in stored} == set(bad)
    assert {r for _, _, r in stored} <= {r.value for r in Reason}
    # no consumer died: both are still connected and still taking messages
    assert all(t.is_alive() for t in platform.ingest._threads)
    before = platform.alerts.messages
    platform.publisher.publish_all(fleet_traffic(1, prefix=f"fz{n}-after").messages)
    wait(lambda: platform.alerts.messages > before, "the alert engine still consuming")
