"""A device that claims another device's id: the broker refuses B's topics to A, and a payload naming B on
A's own topic is quarantined by ingest (device_mismatch) with the raw bytes, never stored as B's data."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import psycopg

from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from cloud.identity import provision
from cloud.identity.dynsec import DynsecClient
from cloud.ingest.service import IngestService
from contract.codec import encode
from contract.messages import SessionStart
from tests.identity.test_broker_acl import Peer
from tests.support.services import secure_broker


def test_a_session_claiming_another_device_is_quarantined(database_url: str) -> None:
    migrate(database_url)
    broker = secure_broker("admin-pw")
    broker.start()
    try:
        with DynsecClient(broker.url, "admin", "admin-pw") as admin:
            provision.bootstrap(admin)
            a = provision.provision_device(admin, "dev-a", broker.url)
            provision.provision_device(admin, "dev-b", broker.url)
            svc = provision.provision_service(admin, "svc-ingest-1", "svc-ingest", broker.url)
        cfg = CloudConfig(
            database_url=database_url, mqtt_url=svc.url_with_secret(), consumer_id="svc-ingest-1"
        )
        ingest = IngestService(cfg, housekeeping=False, late_horizon=timedelta(days=30))
        ingest.start()
        assert ingest.consumer.subscribed_event.wait(10)  # else the broker drops the publish (0x10)
        device = Peer(broker.port, a.username, a.password, "dev-a")
        try:
            assert not device.wait_connack().is_failure
            now = datetime.now(UTC)
            forged = encode(
                SessionStart(device_id="dev-b", seq=1, ts=now, session_id="s-forged", started_at=now, level=3)
            )
            assert device.publish("mf/v1/dev-b/up/session_start", forged).value == 135  # not its topic
            assert not device.publish("mf/v1/dev-a/up/session_start", forged).is_failure  # its topic, B's id
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with psycopg.connect(database_url) as conn:
                    q = conn.execute("SELECT topic, reason, payload FROM quarantine").fetchall()
                if q:
                    break
                time.sleep(0.05)
            assert [(t, r, bytes(p)) for t, r, p in q] == [
                ("mf/v1/dev-a/up/session_start", "device_mismatch", forged)
            ]
            with psycopg.connect(database_url) as conn:
                assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
        finally:
            device.close()
            ingest.stop()
    finally:
        broker.close()
