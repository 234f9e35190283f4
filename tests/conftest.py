"""Shared fixtures: real services only (see tests/support/services.py)."""

from __future__ import annotations

import os
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


# CI runs the property tests and the API fuzzing with fixed seeds, so a red build is reproducible and a
# green one stays green; locally every run explores new examples.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
