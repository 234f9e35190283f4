"""Fixtures of the simulator tests that run the real cloud beside the simulated fleet."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cloud.config import CloudConfig
from cloud.db.migrate import migrate
from cloud.ingest.service import IngestService
from tests.support.services import Mosquitto


@pytest.fixture
def ingest(broker: Mosquitto, database_url: str) -> Iterator[IngestService]:
    """A real ingest service on the test's broker and scratch database, subscribed before the test runs;
    commit marks 0.2 s after a commit. (test_loadtest.py and test_sixty_days.py have their own.)"""
    migrate(database_url)
    cfg = CloudConfig.from_env(
        {}, database_url=database_url, mqtt_url=broker.url, consumer_id="sim-ingest", mark_delay_s=0.2
    )
    service = IngestService(cfg, housekeeping=False)
    service.start()
    try:
        assert service.consumer.subscribed_event.wait(10)
        yield service
    finally:
        service.stop()
