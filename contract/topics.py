"""Every topic string is built and parsed here, and nowhere else.

Layout (MQTT 5):
    mf/v1/{device_id}/up/{kind}      device -> cloud   (telemetry, events, status)
    mf/v1/{device_id}/down/{kind}    cloud -> device   (desired state, notices)

A device's broker ACL is simply "publish under mf/v1/<me>/up/#, subscribe under mf/v1/<me>/down/#".

Cloud-internal traffic lives under `mf/v1/_cloud/...`: `_cloud` cannot be a device id (a device id starts
with a letter or digit), so no device topic, filter or ACL ever covers it.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import NamedTuple

from contract.errors import TopicError

PREFIX = "mf/v1"
DEVICE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_DEVICE_ID_RE = re.compile(rf"^{DEVICE_ID_PATTERN}\Z")


class Uplink(StrEnum):
    """The kinds of message a device publishes. The value is the last topic level and the `kind` tag."""

    SESSION_START = "session_start"
    SAMPLES = "samples"
    SESSION_END = "session_end"
    EVENT = "event"
    STATUS = "status"
    OTA = "ota"  # firmware update progress: OtaReport (contract/ota.py)
    SYNC = "sync"  # "tell me my commit mark": SyncRequest (no seq of its own; not telemetry)


class Downlink(StrEnum):
    """The kinds of message the cloud sends to one device (retained desired state, or notices)."""

    PROTOCOL = "protocol"  # retained: the signed treatment protocol the device should run
    OTA = "ota"  # retained: the firmware job the device should carry out
    NOTICE = "notice"  # QoS 1, not retained: a message for the user
    GATE = "gate"  # retained: the safety gate (sessions blocked by a contraindication, or not)
    COMMITTED = "committed"  # QoS 1, not retained: CommitMark, "every seq <= through is committed"


# Cloud-internal topics (never a device's): the level after PREFIX that no device id can take.
CLOUD_LEVEL = "_cloud"
# The alert feed: after each committed batch, ingest publishes there ONE CommittedBatch (contract.messages)
# holding the evaluated messages that batch stored; the alert engine reads it through its shared group
# (docs/decisions/alert-feed.md). QoS 1, not retained.
COMMITTED_FEED = f"{PREFIX}/{CLOUD_LEVEL}/committed"


class ParsedTopic(NamedTuple):
    device_id: str
    kind: Uplink


def is_valid_device_id(device_id: str) -> bool:
    return bool(_DEVICE_ID_RE.match(device_id))


def check_device_id(device_id: str) -> str:
    if not is_valid_device_id(device_id):
        raise TopicError(
            f"device id {device_id!r} is not valid: 1-64 characters of letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return device_id


def uplink(device_id: str, kind: Uplink) -> str:
    return f"{PREFIX}/{check_device_id(device_id)}/up/{kind.value}"


def downlink(device_id: str, kind: Downlink) -> str:
    return f"{PREFIX}/{check_device_id(device_id)}/down/{kind.value}"


def downlink_filter(device_id: str) -> str:
    """What a device subscribes to: everything addressed to it, and nothing else."""
    return f"{PREFIX}/{check_device_id(device_id)}/down/#"


def parse_downlink(topic: str) -> tuple[str, Downlink]:
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[3] != "down":
        raise TopicError(f"topic {topic!r} is not {PREFIX}/<device_id>/down/<kind>")
    try:
        return check_device_id(parts[2]), Downlink(parts[4])
    except ValueError:
        raise TopicError(f"unknown downlink kind {parts[4]!r} in {topic!r}") from None


def uplink_filter(kind: Uplink | None = None) -> str:
    """A subscription filter for one kind of uplink from every device, or all uplinks."""
    return f"{PREFIX}/+/up/{kind.value if kind else '#'}"


def shared(group: str, topic_filter: str) -> str:
    """An MQTT 5 shared subscription: the broker spreads matching messages over the group's members."""
    if not group or any(c in group for c in "/+#"):
        raise TopicError(f"shared subscription group {group!r} must be non-empty without '/', '+', '#'")
    return f"$share/{group}/{topic_filter}"


def parse_uplink(topic: str) -> ParsedTopic:
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[3] != "up":
        raise TopicError(f"topic {topic!r} is not {PREFIX}/<device_id>/up/<kind>")
    device_id = check_device_id(parts[2])
    try:
        kind = Uplink(parts[4])
    except ValueError:
        raise TopicError(f"unknown uplink kind {parts[4]!r} in {topic!r}") from None
    return ParsedTopic(device_id, kind)
