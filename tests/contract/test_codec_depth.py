"""A JSON document nested deeper than the decoder's recursion limit is a ContractError, never a
RecursionError: every consumer of device bytes catches ContractError and quarantines (issue 12: the alert
engine's thread died on one such message)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from contract.codec import decode_downlink, decode_sync, decode_uplink
from contract.errors import ContractError, Reason

NOW = datetime(2024, 5, 6, 12, tzinfo=UTC)
DEPTH = 5_000  # well past msgspec's limit, well under the 64 KiB payload limit


def deep_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def deep_in_field(depth: int) -> bytes:  # the tag is read, then an unknown field's value nests
    return b'{"kind":"samples","x":' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("payload", [deep_object(DEPTH), deep_in_field(DEPTH)], ids=["object", "field"])
def test_deep_nesting_is_a_contract_error_for_every_decoder(payload: bytes) -> None:
    calls: list[Callable[[], object]] = [
        lambda: decode_uplink("mf/v1/d1/up/samples", payload, NOW),
        lambda: decode_sync("mf/v1/d1/up/sync", payload, NOW),
        lambda: decode_downlink("mf/v1/d1/down/notice", payload),
    ]
    for call in calls:
        with pytest.raises(ContractError) as err:
            call()
        assert err.value.reason in (Reason.NOT_JSON, Reason.SCHEMA)
