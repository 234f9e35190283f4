"""The contract's exception tree. Every rejection carries a machine-readable reason code."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a message was rejected; stored in the quarantine table as is."""

    BAD_TOPIC = "bad_topic"
    OVERSIZED = "oversized"
    NOT_JSON = "not_json"
    SCHEMA = "schema"
    UNKNOWN_VERSION = "unknown_version"
    TOPIC_MISMATCH = "topic_mismatch"
    DEVICE_MISMATCH = "device_mismatch"
    OUT_OF_RANGE = "out_of_range"
    TOO_LATE = "too_late"


class ContractError(Exception):
    """A message that breaks the wire contract. Permanent: retrying the same bytes never helps."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class TopicError(ContractError):
    """A topic string that is not one of ours."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.BAD_TOPIC, detail)
