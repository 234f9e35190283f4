"""The one skip condition of the NATS tier's tests: they start their own nats-server (tests/support/nats.py);
`make test` installs Debian's (scripts/ensure-services.sh)."""

from __future__ import annotations

import pytest

from tests.support.nats import nats_server_binary

requires_nats_server = pytest.mark.skipif(
    nats_server_binary() is None,
    reason="nats-server is not installed: apt-get install -y nats-server (or set MICROFLEET_NATS_SERVER)",
)
