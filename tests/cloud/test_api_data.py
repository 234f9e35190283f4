"""Sessions, usage rollups and quarantine over real HTTP, from rows seeded with INSERT."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from psycopg.types.json import Jsonb

from cloud.api.models import Role
from cloud.config import CloudConfig
from tests.cloud.test_api_support import execute, fixed_clock, migrated_database, mint_all, serve

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with migrated_database() as d:
        yield d


@pytest.fixture(scope="module")
def viewer(dsn: str) -> Iterator[httpx.Client]:
    keys = mint_all(dsn)
    with (
        serve(CloudConfig(database_url=dsn), clock=fixed_clock(NOW)) as server,
        server.client(keys[Role.VIEWER]) as c,
    ):
        yield c


def _session(device: str, sid: str, started: datetime, **summary: object) -> tuple[object, ...]:
    return (device, sid, started, started + timedelta(minutes=5), "user", 2, 3, 300.0, 250.0, Jsonb(summary))


SESSION_SQL = (
    "insert into sessions (device_id, session_id, started_at, ended_at, end_reason, level_start, level_max, "
    "duration_on_s, duration_active_s, zones) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def test_sessions_of_a_device_in_a_window(viewer: httpx.Client, dsn: str) -> None:
    days = [1, 3, 10, 40]  # days before NOW
    execute(dsn, SESSION_SQL, [_session("ses-a", f"s{d}", NOW - timedelta(days=d), cheek_L=60) for d in days])
    execute(dsn, SESSION_SQL, [_session("ses-b", "other", NOW - timedelta(days=2))])
    r = viewer.get("/devices/ses-a/sessions")  # default window: the last 30 days
    assert r.status_code == 200
    assert [s["session_id"] for s in r.json()] == ["s1", "s3", "s10"]
    r = viewer.get(
        "/devices/ses-a/sessions",
        params={
            "since": (NOW - timedelta(days=50)).isoformat(),
            "until": (NOW - timedelta(days=2)).isoformat(),
        },
    )
    assert [s["session_id"] for s in r.json()] == ["s3", "s10", "s40"]
    assert [s["session_id"] for s in viewer.get("/devices/ses-a/sessions", params={"limit": 1}).json()] == [
        "s1"
    ]


def test_one_session_with_its_summary(viewer: httpx.Client, dsn: str) -> None:
    started = NOW - timedelta(hours=3)
    execute(dsn, SESSION_SQL, [_session("ses-c", "abc", started, jaw_L=42)])
    r = viewer.get("/devices/ses-c/sessions/abc")
    assert r.status_code == 200
    s = r.json()
    assert datetime.fromisoformat(s["started_at"]) == started
    assert (s["level_max"], s["duration_active_s"], s["zones"]) == (3, 250.0, {"jaw_L": 42})
    assert viewer.get("/devices/ses-c/sessions/nope").status_code == 404


@pytest.mark.parametrize(
    "params",
    [
        {"since": "2026-03-10T00:00:00+00:00", "until": "2026-03-01T00:00:00+00:00"},  # reversed
        {"since": "2020-01-01T00:00:00+00:00"},  # too wide
        {"since": "2026-03-01T00:00:00"},  # no time zone
    ],
)
def test_bad_windows_are_422(viewer: httpx.Client, params: dict[str, str]) -> None:
    r = viewer.get("/devices/ses-a/sessions", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][0] == "query"


def test_usage_per_device_and_fleet(viewer: httpx.Client, dsn: str) -> None:
    day = datetime(2026, 3, 9, tzinfo=UTC)
    hourly = [
        (day + timedelta(hours=h), "use-a", 300, 280, 200.0, 390.0, 4, 60000.0, 300) for h in (8, 9, 20)
    ]
    execute(
        dsn,
        "insert into usage_device_hourly values (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [*hourly, (day + timedelta(hours=8), "use-b", 10, 10, 100.0, 110.0, 1, 1000.0, 10)],
    )
    execute(
        dsn,
        "insert into usage_device_daily values (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [(day, "use-a", 900, 840, 200.0, 390.0, 4, 180000.0, 900)],
    )
    execute(
        dsn,
        "insert into usage_fleet_daily values (%s, %s, %s, %s, %s, %s, %s, %s)",
        [(day - timedelta(days=d), 2, 910, 850, 198.9, 390.0, 181000.0, 910) for d in range(3)],
    )
    r = viewer.get("/devices/use-a/usage", params={"grain": "hour"})  # default: the last 2 days
    body = r.json()
    assert r.status_code == 200 and body["scope"] == "use-a" and body["grain"] == "hour"
    assert [(b["bucket"][11:13], b["samples"], b["level_max"]) for b in body["buckets"]] == [
        ("08", 300, 4),
        ("09", 300, 4),
        ("20", 300, 4),
    ]
    daily = viewer.get("/devices/use-a/usage").json()["buckets"]
    assert [(b["samples"], b["active_s"]) for b in daily] == [(900, 840)]
    fleet = viewer.get(
        "/usage/fleet", params={"since": (day - timedelta(days=1)).isoformat(), "until": NOW.isoformat()}
    ).json()
    assert [(b["bucket"][:10], b["devices"]) for b in fleet["buckets"]] == [
        ("2026-03-08", 2),
        ("2026-03-09", 2),
    ]
    assert viewer.get("/usage/fleet", params={"grain": "minute"}).status_code == 422


def test_quarantine_counts_items_and_payload(viewer: httpx.Client, dsn: str) -> None:
    rows = []
    for i, (reason, age_h) in enumerate([("schema", 1), ("schema", 2), ("too_late", 3), ("not_json", 30)]):
        payload = f"payload-{i}".encode()
        rows.append(
            (
                NOW - timedelta(hours=age_h),
                f"mf/v1/q{i}/up/batch",
                payload,
                hashlib.sha256(payload).digest(),
                reason,
            )
        )
    execute(
        dsn,
        "insert into quarantine (received_at, topic, payload, payload_sha256, reason) values (%s, %s, %s, %s, %s)",
        rows,
    )
    page = viewer.get("/quarantine").json()  # default: the last day
    assert page["counts"] == [{"reason": "schema", "count": 2}, {"reason": "too_late", "count": 1}]
    assert [i["topic"] for i in page["items"]] == [
        "mf/v1/q0/up/batch",
        "mf/v1/q1/up/batch",
        "mf/v1/q2/up/batch",
    ]
    only = viewer.get("/quarantine", params={"reason": "too_late"}).json()
    assert [i["reason"] for i in only["items"]] == ["too_late"] and len(only["counts"]) == 2
    item = page["items"][0]
    assert item["payload_size"] == len(b"payload-0")
    assert item["payload_sha256"] == hashlib.sha256(b"payload-0").hexdigest()
    detail = viewer.get(f"/quarantine/{item['id']}").json()
    assert base64.b64decode(detail["payload_base64"]) == b"payload-0"
    assert viewer.get("/quarantine/987654321").status_code == 404
