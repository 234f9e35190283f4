"""Shared fixtures: real services only (see tests/support/services.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.services import Mosquitto, scratch_database


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    """A private mosquitto with the project's configuration, on a free port."""
    b = Mosquitto()
    b.start()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def database_url() -> Iterator[str]:
    """A scratch PostgreSQL database (empty: apply migrations yourself with cloud.db.migrate)."""
    with scratch_database() as dsn:
        yield dsn
