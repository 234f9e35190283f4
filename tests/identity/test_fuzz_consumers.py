"""No input stops a consumer (issue 12), tried for real: random bytes and mutated valid messages of every
uplink kind (bit flips, truncation, deep nesting, huge numbers, NUL and surrogate escapes in strings and
keys, wrong types, duplicate keys, a body on another kind's topic) go through the real broker into every
consumer that decodes device bytes: ingest (which also stores OTA reports and reads sync requests) and the
alert engine (the OTA service and the protocols publisher read the database, not device uplinks). Each
poison is followed by a CANARY, a valid session that must be stored by ingest (its sessions row, ended)
and evaluated by the engine (its alert_history row) in time. Every message the contract (or PostgreSQL)
refuses is quarantined by ingest and recorded by the engine with a reason; no consumer thread dies."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bench._common import Publisher
from cloud.alerts import refused
from cloud.alerts.service import EVALUATED, AlertService
from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from cloud.ingest.service import IngestService
from cloud.runtime import threads
from contract.codec import decode_sync, decode_uplink, encode
from contract.errors import ContractError
from contract.messages import (
    DeviceEvent,
    DeviceState,
    EventType,
    OtaReport,
    OtaState,
    Status,
    SyncRequest,
    kind_of,
)
from contract.topics import Uplink, parse_uplink, uplink
from tests.cloud.test_alerts_engine_support import engine_config, session
from tests.support.services import Mosquitto, scratch_database

pytestmark = pytest.mark.slow
KINDS = tuple(Uplink)  # every uplink kind, sync included
_ids = itertools.count()


@dataclass
class Platform:
    dsn: str
    broker: Mosquitto
    ingest: IngestService
    alerts: AlertService
    publisher: Publisher
    deaths: list[int]


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    deaths: list[int] = []
    fatal_before = threads.on_fatal
    threads.on_fatal = deaths.append  # a dying consumer thread fails the test instead of exiting pytest
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
            # both groups have a member before the first poison: the broker drops a publish to an empty one
            assert ingest.consumer.subscribed_event.wait(10) and alerts.consumer.subscribed_event.wait(10)
            publisher = Publisher(broker.url, client_id="fuzz-pub")
            try:
                yield Platform(dsn, broker, ingest, alerts, publisher, deaths)
            finally:
                publisher.close()
                alerts.__exit__(None, None, None)
                ingest.stop()
    finally:
        broker.close()
        threads.on_fatal = fatal_before


# -- valid templates of every kind, and the ways to spoil them -------------------------------------------


def template(kind: Uplink, device: str, now: datetime) -> bytes:
    start = now - timedelta(minutes=10)
    if kind is Uplink.SYNC:
        return encode(SyncRequest(device_id=device, ts=now, floor=1, next_seq=4))
    if kind is Uplink.STATUS:
        return encode(Status(device_id=device, seq=1, ts=now, state=DeviceState.ONLINE, model="home-std"))
    if kind is Uplink.OTA:
        return encode(
            OtaReport(
                device_id=device, seq=1, ts=now, job_id="job-1", state=OtaState.DOWNLOADING, progress=0.5
            )
        )
    if kind is Uplink.EVENT:
        return encode(
            DeviceEvent(
                device_id=device,
                seq=1,
                ts=now,
                event=EventType.LEVEL_CHANGE,
                at=now,
                session_id="s-1",
                level_from=2,
                level_to=3,
                detail="knob",
            )
        )
    start_m, samples_m, end_m = session(device, "s-1", start, 0)
    return encode({Uplink.SESSION_START: start_m, Uplink.SAMPLES: samples_m, Uplink.SESSION_END: end_m}[kind])


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every (path, value) of a JSON document, the root included."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*prefix, i))


def put(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    doc[path[0]] = put(doc[path[0]], path[1:], value)
    return doc


MARK = "\u2603MARK\u2603"  # a placeholder replaced by raw JSON text after dumping
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
BAD_STRINGS = ["\\u0000", "a\\u0000b", "\\ud800", "x\\udfffy", "\\udc00\\ud800", "\\u0000\\ud83d"]
HUGE = ["1e400", "-1e400", "1" + "0" * 400, "123456789012345678901234567890", "1e308", "-0.0e-999", "9" * 30]


@st.composite
def poison(draw: st.DrawFn, device: str, now: datetime) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(KINDS))
    valid = template(kind, device, now)
    topic = uplink(device, kind)
    how = draw(
        st.sampled_from(
            [
                "random",
                "bitflip",
                "truncate",
                "nested",
                "huge",
                "bad_string",
                "bad_key",
                "retype",
                "dup_key",
                "topic",
            ]
        )
    )
    event(f"{how} on {kind.value}")
    if how == "random":
        return topic, draw(st.binary(max_size=300))
    if how == "bitflip":
        data = bytearray(valid)
        for bit in draw(st.lists(st.integers(0, 2**20), min_size=1, max_size=8)):
            bit %= len(data) * 8  # drawn independently of the length (device ids vary by run)
            data[bit // 8] ^= 1 << (bit % 8)
        return topic, bytes(data)
    if how == "truncate":
        return topic, valid[: draw(st.integers(0, 2**20)) % len(valid)]
    if how == "topic":  # a valid body on another kind's topic
        return uplink(device, draw(st.sampled_from([k for k in KINDS if k is not kind]))), valid
    doc = json.loads(valid)
    where = draw(st.sampled_from([p for p, _ in paths(doc)]))
    if how == "nested":
        depth = draw(st.integers(200, 8_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        raw = opener * depth + ("1" if opener != "[" else "") + closer * depth
    elif how == "huge":
        raw = draw(st.sampled_from(HUGE))
    elif how == "bad_string":
        raw = '"' + draw(st.sampled_from(BAD_STRINGS)) + '"'
    elif how == "bad_key":  # a key holding an escape, at the top level or in a nested object
        objects = [p for p, v in paths(doc) if isinstance(v, dict)]
        obj = draw(st.sampled_from(objects))
        key = draw(st.sampled_from([*BAD_STRINGS, *doc]))
        put(doc, obj, {**_get(doc, obj), MARK: 1})
        text = json.dumps(doc).replace(json.dumps(MARK), '"' + key + '"')
        return topic, text.encode()
    elif how == "dup_key":  # the same key twice at the top level, the second with another value
        key = draw(st.sampled_from(sorted(doc)))
        value = json.dumps(draw(json_values))
        return topic, valid[:-1] + f',"{key}":{value}}}'.encode()
    else:  # retype
        raw = json.dumps(draw(json_values))
    text = json.dumps(put(doc, where, MARK)).replace(json.dumps(MARK), raw)
    return topic, text.encode()


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


# -- what each consumer must do with a message ----------------------------------------------------------


def contract_refuses(topic: str, payload: bytes, now: datetime) -> bool:
    """True if the contract refuses these bytes, or PostgreSQL could not store what it decodes (a NUL)."""
    try:
        if parse_uplink(topic).kind is Uplink.SYNC:
            m: Any = decode_sync(topic, payload, now)
        else:
            m = decode_uplink(topic, payload, now)
    except ContractError:
        return True
    return refused.unstorable(payload, m) is not None


def rows(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def wait(predicate: Callable[[], Any], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def quarantined(dsn: str, table: str, items: list[tuple[str, bytes]]) -> set[tuple[str, bytes]]:
    """The (topic, sha256) of `items` that `table` (quarantine or alert_refused) holds with a reason."""
    keys = {(t, hashlib.sha256(p).digest()) for t, p in items}
    found = rows(
        dsn,
        f"select topic, payload_sha256 from {table} where topic = any(%s) and reason <> ''",
        sorted({t for t, _ in items}),
    )
    return {(t, bytes(s)) for t, s in found} & keys


def stored_or_quarantined(dsn: str, topic: str, payload: bytes, now: datetime) -> Callable[[], bool]:
    m = decode_uplink(topic, payload, now)
    log = "select 1 from uplink_log where device_id = %s and seq = %s"
    return lambda: bool(
        rows(dsn, log, m.device_id, m.seq) or quarantined(dsn, "quarantine", [(topic, payload)])
    )


def check_round(platform: Platform, poisons: list[tuple[str, bytes]], now: datetime) -> None:
    """Publish each poison followed by a canary session, then wait: every canary stored and evaluated,
    every refused poison quarantined by ingest and recorded by the engine, no thread dead."""
    n = next(_ids)
    canaries = [f"fz{n}-canary-{i}" for i in range(len(poisons))]
    traffic: list[tuple[str, bytes]] = []
    for (topic, payload), dev in zip(poisons, canaries, strict=True):
        traffic.append((topic, payload))
        canary = session(dev, "s-c", now - timedelta(minutes=10), 0)
        traffic += [(uplink(m.device_id, kind_of(m)), encode(m)) for m in canary]
    platform.publisher.publish_all(traffic)
    dsn = platform.dsn

    def stored() -> bool:
        got = rows(
            dsn, "select count(*) from sessions where device_id = any(%s) and ended_at is not null", canaries
        )
        return bool(got[0][0] == len(canaries))

    def evaluated() -> bool:
        got = rows(dsn, "select count(*) from alert_history where device_id = any(%s)", canaries)
        return bool(got[0][0] == len(canaries))

    wait(stored, "every canary stored by ingest")
    wait(evaluated, "every canary evaluated by the alert engine")
    bad = [(t, p) for t, p in poisons if contract_refuses(t, p, now)]
    want = {(t, hashlib.sha256(p).digest()) for t, p in bad}
    wait(lambda: quarantined(dsn, "quarantine", bad) == want, f"ingest's quarantine of {bad!r}")
    engine_bad = [(t, p) for t, p in bad if parse_uplink(t).kind in EVALUATED]
    engine_want = {(t, hashlib.sha256(p).digest()) for t, p in engine_bad}
    wait(
        lambda: quarantined(dsn, "alert_refused", engine_bad) == engine_want,
        f"the engine's record of {bad!r}",
    )
    # a mutant the contract still accepts is stored by ingest (or quarantined: too late, a misfit)
    for t, p in poisons:
        if (t, p) not in bad and parse_uplink(t).kind is not Uplink.SYNC:
            wait(
                stored_or_quarantined(dsn, t, p, now), f"ingest storing or quarantining the mutant {(t, p)!r}"
            )
    assert platform.deaths == [], "a consumer thread died"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_poison_stops_a_consumer_and_every_canary_is_processed(
    platform: Platform, data: st.DataObject
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    n = next(_ids)
    poisons = [
        data.draw(poison(f"fz{n}-p{i}", now), label=f"poison {i}")
        for i in range(data.draw(st.integers(1, 4), label="poisons"))
    ]
    check_round(platform, poisons, now)
    event(f"{sum(contract_refuses(t, p, now) for t, p in poisons)} of {len(poisons)} refused")


# The inputs of issue 12, each a regression on its own.
def _nul_session(now: datetime) -> tuple[str, bytes]:
    t = template(Uplink.SESSION_START, "fz-nul", now).replace(b'"s-1"', b'"s\\u0000bad"')
    return uplink("fz-nul", Uplink.SESSION_START), t


def _nul_reason(now: datetime) -> tuple[str, bytes]:  # a schema error whose text carries the NUL
    return uplink("fz-nulreason", Uplink.SAMPLES), b'{"kind":"samples","\\u0000":1}'


def _nested(now: datetime) -> tuple[str, bytes]:
    return uplink("fz-deep", Uplink.SAMPLES), b'{"a":' * 5000 + b"1" + b"}" * 5000


@pytest.mark.parametrize(
    "make", [_nul_session, _nul_reason, _nested], ids=["nul_session_id", "nul_in_reason", "deep"]
)
def test_the_issues_poisons(platform: Platform, make: Callable[[datetime], tuple[str, bytes]]) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    check_round(platform, [make(now)], now)
