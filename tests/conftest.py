"""Shared fixtures: real services only (see tests/support/services.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.services import Mosquitto, ProductionBroker, production_broker, scratch_database

if TYPE_CHECKING:
    from tests.identity.test_broker_acl import Peer


def _mosquitto() -> Iterator[Mosquitto]:
    b = Mosquitto()
    b.start()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    """A private mosquitto with the project's configuration, on a free port."""
    yield from _mosquitto()


@pytest.fixture(scope="module")
def module_broker() -> Iterator[Mosquitto]:
    """One such mosquitto for every test of a module (the tests keep to their own device ids)."""
    yield from _mosquitto()


@pytest.fixture
def prod(tmp_path: Path) -> Iterator[ProductionBroker]:
    """The broker as compose runs it (tests/support/services.production_broker), with the service
    identities; `prod.device(id)` provisions a device bound to its client id."""
    b = production_broker(tmp_path)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    """Raw MQTT peers a test opens (tests/identity/test_broker_acl.Peer), closed afterwards."""
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


@pytest.fixture
def database_url() -> Iterator[str]:
    """A scratch PostgreSQL database (empty: apply migrations yourself with cloud.db.migrate)."""
    with scratch_database() as dsn:
        yield dsn


# CI runs the property tests and the API fuzzing with fixed seeds, so a red build is reproducible and a
# green one stays green; locally every run explores new examples.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
