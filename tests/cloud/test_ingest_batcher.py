"""Pure tests of the ingest batcher: decoding, quarantine reasons, one row per natural key, merging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from bench._common import session_traffic, to_wire
from cloud.ingest import rows, tables
from cloud.ingest.batcher import Batcher
from contract import topics
from contract.codec import encode
from contract.errors import Reason
from contract.messages import DeviceEvent, DeviceState, EventType, Sample, SampleBatch, Status
from contract.topics import Uplink

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
START = NOW - timedelta(hours=1)


def traffic() -> list[tuple[str, bytes]]:
    msgs = session_traffic("dev-a", start=START, batches=3, samples_per_batch=4)
    msgs += session_traffic("dev-b", start=START + timedelta(minutes=5), batches=2, samples_per_batch=3)
    return [to_wire(m) for m in msgs]


def expected_keys(messages: list[tuple[str, bytes]]) -> dict[str, set[tuple[object, ...]]]:
    b: Batcher[int] = Batcher(consumer="c", max_messages=10**6)
    for i, (t, p) in enumerate(messages):
        assert b.add(t, p, i, now=NOW, mono=0.0) is None
    batch = b.take()
    return {
        "samples": {r[:2] for r in batch.samples},
        "events": {r[:3] for r in batch.events},
        "log": {(r[0], r[1], r[3]) for r in batch.uplink_log},
        "sessions": {r[:3] for r in batch.sessions},
    }


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_interleaving_with_duplicates_gives_each_natural_key_once(data: st.DataObject) -> None:
    messages = traffic()
    order = data.draw(st.permutations(messages))
    dups = data.draw(st.lists(st.sampled_from(messages), max_size=15))
    stream = list(order)
    for d in dups:  # duplicates anywhere, as a redelivery would put them
        stream.insert(data.draw(st.integers(0, len(stream))), d)
    cuts = sorted(data.draw(st.lists(st.integers(1, len(stream)), max_size=6)))
    b: Batcher[int] = Batcher(consumer="c", max_messages=10**6)
    batches = []
    for i, (t, p) in enumerate(stream):
        b.add(t, p, i, now=NOW, mono=0.0)
        if cuts and i + 1 == cuts[0]:
            while cuts and cuts[0] == i + 1:
                cuts.pop(0)
            batches.append(b.take())
    batches.append(b.take())

    # inside a batch, one row per key; across batches, ON CONFLICT semantics: the union of keys
    stored: dict[str, set[tuple[object, ...]]] = {
        "samples": set(),
        "events": set(),
        "log": set(),
        "sessions": set(),
    }
    sessions: dict[tuple[object, ...], rows.Row] = {}
    devices: dict[str, tuple[object, ...]] = {}
    acks = []
    for batch in batches:
        for name, keys in (
            ("samples", [r[:2] for r in batch.samples]),
            ("events", [r[:3] for r in batch.events]),
            ("log", [(r[0], r[1], r[3]) for r in batch.uplink_log]),
            ("sessions", [r[:3] for r in batch.sessions]),
        ):
            assert len(keys) == len(set(keys)), f"duplicate {name} key inside one batch"
            stored[name] |= set(keys)
        for r in batch.sessions:
            sessions[r[:3]] = r if r[:3] not in sessions else rows.merge_session(sessions[r[:3]], r)
        for r in batch.devices:
            old = devices.get(r[0])
            devices[r[0]] = r if old is None else (r[0], max(old[1], r[1]), max(old[2], r[2]))
        acks += batch.acks
    assert stored == expected_keys(messages)
    assert sorted(acks) == list(range(len(stream))), "every delivery is acknowledged exactly once"
    assert all(r[rows.SESSION_COLUMNS.index("ended_at")] is not None for r in sessions.values())
    assert all(r[rows.SESSION_COLUMNS.index("tz_offset_min")] is not None for r in sessions.values())
    assert {d: v[2] for d, v in devices.items()} == {"dev-a": 7, "dev-b": 6}


def quarantined(topic: str, payload: bytes, now: datetime = NOW) -> tuple[Reason | None, list[rows.Row]]:
    b: Batcher[int] = Batcher(consumer="c", max_payload=4096)
    reason = b.add(topic, payload, 1, now=now, mono=0.0)
    batch = b.take()
    assert batch.acks == [1], "a rejected message is acknowledged too (after its quarantine row commits)"
    return reason, batch.quarantine


def test_each_bad_input_is_quarantined_with_its_reason() -> None:
    good_topic, good = to_wire(session_traffic("dev-a", start=START)[0])
    status = msgspec.json.decode(good)
    cases = {
        Reason.NOT_JSON: (good_topic, b"\xff not json"),
        Reason.SCHEMA: (good_topic, msgspec.json.encode({**status, "seq": "x"})),
        Reason.UNKNOWN_VERSION: (good_topic, msgspec.json.encode({**status, "schema_version": 99, "new": 1})),
        Reason.DEVICE_MISMATCH: (topics.uplink("dev-z", Uplink.STATUS), good),
        Reason.TOPIC_MISMATCH: (topics.uplink("dev-a", Uplink.EVENT), good),
        Reason.OVERSIZED: (good_topic, b" " * 5000 + good),
        Reason.OUT_OF_RANGE: (good_topic, msgspec.json.encode({**status, "battery_pct": 250.0})),
        Reason.BAD_TOPIC: ("mf/v1/dev-a/up/nonsense", good),
        Reason.TOO_LATE: to_wire(
            Status(device_id="dev-a", seq=1, ts=NOW - timedelta(days=20), state=DeviceState.ONLINE)
        ),
    }
    for reason, (topic, payload) in cases.items():
        got, q = quarantined(topic, payload)
        assert got is reason, (reason, got)
        assert [(r[0], r[1], r[3]) for r in q] == [(topic, payload, reason.value)]
        assert q[0][2] == rows.sha256(payload) and q[0][4]  # a detail saying why


def test_values_that_do_not_fit_their_column_are_out_of_range() -> None:
    # binary COPY would store 70000 in a smallint as 4464: such values never reach the database
    event = DeviceEvent(
        device_id="d", seq=1, ts=START, event=EventType.LEVEL_CHANGE, at=START, level_from=70000
    )
    huge_seq = Status(device_id="d", seq=2**63, ts=START, state=DeviceState.ONLINE)
    for m, column in ((event, "level_from"), (huge_seq, "seq")):
        reason, q = quarantined(*to_wire(m))
        assert reason is Reason.OUT_OF_RANGE and column in q[0][4]


def test_same_bad_bytes_twice_are_one_quarantine_row() -> None:
    b: Batcher[int] = Batcher(consumer="c")
    for i in range(3):
        b.add("mf/v1/d/up/status", b"nope", i, now=NOW, mono=0.0)
    batch = b.take()
    assert len(batch.quarantine) == 1 and batch.acks == [0, 1, 2]


def test_due_by_size_or_age_with_injected_time() -> None:
    msgs = traffic()
    b: Batcher[int] = Batcher(consumer="c", max_messages=3, max_delay_s=0.5)
    assert not b.due(100.0) and b.deadline() is None
    b.add(*msgs[0], 0, now=NOW, mono=10.0)
    assert not b.due(10.4) and b.deadline() == 10.5
    assert b.due(10.5)
    b.add(*msgs[1], 1, now=NOW, mono=10.1)
    b.add(*msgs[2], 2, now=NOW, mono=10.2)
    assert b.due(10.2)  # full
    assert b.take().acks == [0, 1, 2] and len(b) == 0


def test_latest_status_wins_and_will_wins_a_tie() -> None:
    online = Status(device_id="d", seq=5, ts=START, state=DeviceState.ONLINE, fw_version="2")
    will = Status(device_id="d", seq=5, ts=START, state=DeviceState.OFFLINE)
    older = Status(device_id="d", seq=3, ts=START - timedelta(minutes=1), state=DeviceState.ONLINE)
    for order in ([online, will, older], [older, will, online], [will, older, online]):
        b: Batcher[int] = Batcher(consumer="c")
        for i, m in enumerate(order):
            b.add(*to_wire(m), i, now=NOW, mono=0.0)
        (dev,) = b.take().devices
        assert dev[rows.DEVICE_COLUMNS.index("state")] == "offline"
        assert dev[rows.DEVICE_COLUMNS.index("last_seq")] == 5


def test_syncs_and_receipts_of_stored_and_quarantined_messages() -> None:
    from contract.messages import SyncRequest

    b: Batcher[int] = Batcher(consumer="c")
    ok = DeviceEvent(device_id="d", seq=4, ts=START, event=EventType.BOOST, at=START)
    sync = SyncRequest(device_id="d", ts=START, floor=2, next_seq=9)
    assert b.add(*to_wire(ok), 0, now=NOW, mono=0.0) is None
    assert b.add(topics.uplink("d", Uplink.SYNC), encode(sync), 1, now=NOW, mono=0.0) is None
    bad = b'{"kind":"event","seq":7,"unknown":1}'
    assert b.add(topics.uplink("d", Uplink.EVENT), bad, 2, now=NOW, mono=0.0) is Reason.SCHEMA
    assert b.add(topics.uplink("d", Uplink.SYNC), b'{"seq":8}', 3, now=NOW, mono=0.0) is Reason.SCHEMA
    assert b.add("mf/v1/bad id/up/event", b'{"seq":9}', 4, now=NOW, mono=0.0) is Reason.BAD_TOPIC
    batch = b.take()
    assert batch.syncs == [("d", 2, 9, "")] and batch.acks == [0, 1, 2, 3, 4]
    assert batch.receipts == [("d", 4), ("d", 7)]  # no seq for a sync, no device for a bad topic


@given(st.text(max_size=3000))
def test_quarantine_texts_are_always_storable(text: str) -> None:
    cleaned = rows.clean_text(text, rows.MAX_DETAIL_CHARS)
    assert "\x00" not in cleaned and len(cleaned) <= rows.MAX_DETAIL_CHARS
    cleaned.encode("utf-8")  # no lone surrogate
    assert rows.ascii_text(text, 100).isascii()


def test_the_late_horizon_covers_the_outbox_on_both_paths() -> None:
    from cloud.ingest.batcher import MIN_LATE_HORIZON, OUTBOX_OFFLINE_CAPACITY, late_horizon_for

    day = timedelta(days=1)
    assert MIN_LATE_HORIZON > OUTBOX_OFFLINE_CAPACITY
    assert late_horizon_for("timescale", 17 * day, 30 * day) == 16 * day
    assert late_horizon_for("timescale", 7 * day, 30 * day) == MIN_LATE_HORIZON  # never shorter
    assert late_horizon_for("plain", 17 * day, 30 * day) == 30 * day  # nothing compressed: the retention
    assert late_horizon_for("plain", None, None) > 3650 * day
    assert late_horizon_for(None, None, None) == MIN_LATE_HORIZON


def _sample_batch(seq: int, times: list[int], *, device: str = "dev-s", level: int = 3) -> tuple[str, bytes]:
    samples = tuple(
        Sample(
            t=START + timedelta(seconds=s),
            current_ua=1.0,
            voltage_v=2.0,
            impedance_ohm=3.0,
            contact=True,
            zone=None,
            level=level,
        )
        for s in times
    )
    m = SampleBatch(
        device_id=device,
        seq=seq,
        ts=START + timedelta(seconds=max(times) + 1),
        session_id="s-1",
        samples=samples,
    )
    return to_wire(m)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=8), min_size=1, max_size=12))
def test_sample_rows_are_one_per_key_in_any_time_order(messages: list[list[int]]) -> None:
    """Sample times in any order, repeated inside a message or across messages, other devices between:
    one row per (device_id, ts), and the first message to carry a key gives its row."""
    b: Batcher[int] = Batcher(consumer="c", max_messages=10**6)
    first: dict[tuple[str, datetime], int] = {}
    for i, times in enumerate(messages):
        device = "dev-s" if i % 3 else "dev-t"
        assert b.add(*_sample_batch(i, times, device=device, level=i % 20), i, now=NOW, mono=0.0) is None
        for s in times:
            first.setdefault((device, START + timedelta(seconds=s)), i % 20)
    batch = b.take()
    got = {(r[0], r[1]): r[8] for r in batch.samples}
    assert len(got) == len(batch.samples), "a (device_id, ts) key twice in one batch"
    assert got == first
    assert len(batch.uplink_log) == len(batch.receipts) == len(messages)


def test_the_contract_bounds_of_a_sample_batch_fit_its_columns() -> None:
    """Batcher._add_samples skips the column-type check: the contract must keep every field of a sample
    batch within its column (here at the bounds the contract accepts)."""
    from contract.limits import CURRENT_UA, IMPEDANCE_OHM, LEVEL, VOLTAGE_V

    s = Sample(
        t=START,
        current_ua=CURRENT_UA[1],
        voltage_v=VOLTAGE_V[1],
        impedance_ohm=IMPEDANCE_OHM[1],
        contact=True,
        zone=None,
        level=LEVEL[1],
    )
    m = SampleBatch(device_id="d" * 64, seq=2**63 - 1, ts=START, session_id="s" * 64, samples=(s,))
    b: Batcher[int] = Batcher(consumer="c")
    assert b.add(*to_wire(m), 1, now=NOW, mono=0.0) is None
    batch = b.take()
    assert tables.misfit(tables.SAMPLES, batch.samples[0]) is None
    assert tables.misfit(tables.UPLINK_LOG, batch.uplink_log[0]) is None
    assert tables.misfit(tables.DEVICES, batch.devices[0]) is None
