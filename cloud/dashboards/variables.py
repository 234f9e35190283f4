"""The variables every microfleet dashboard offers: model, firmware, protocol and time zone."""

from __future__ import annotations

from cloud.dashboards.spec import VariableSpec

MODEL_QUERY = "SELECT DISTINCT model FROM devices WHERE coalesce(model, '') <> '' ORDER BY 1"
FIRMWARE_QUERY = "SELECT DISTINCT fw_version FROM devices WHERE coalesce(fw_version, '') <> '' ORDER BY 1"
PROTOCOL_QUERY = "SELECT DISTINCT protocol_id FROM devices WHERE coalesce(protocol_id, '') <> '' ORDER BY 1"

# Day boundaries ("sessions today", "per day") follow this zone. Users' own local days are in
# sessions.tz_offset_min; the operator picks the zone of the market they look at.
TIME_ZONES = (
    "UTC",
    "Europe/London",
    "Europe/Paris",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Asia/Seoul",
    "Australia/Sydney",
)

MODEL = VariableSpec(name="model", label="Model", query=MODEL_QUERY)
FIRMWARE = VariableSpec(name="firmware", label="Firmware", query=FIRMWARE_QUERY)
PROTOCOL = VariableSpec(name="protocol", label="Protocol", query=PROTOCOL_QUERY)
TZ = VariableSpec(name="tz", label="Time zone", options=TIME_ZONES, multi=False)

STANDARD = (MODEL, FIRMWARE, PROTOCOL, TZ)
