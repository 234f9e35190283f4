"""Request and response bodies of the HTTP API (pydantic v2): what the OpenAPI document describes."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from contract.topics import DEVICE_ID_PATTERN, is_valid_device_id

DEVICE_ID_REGEX = f"^{DEVICE_ID_PATTERN}$"


def _device_id(value: str) -> str:
    if not is_valid_device_id(value):
        raise ValueError("1-64 characters of letters, digits, '_', '.', '-', starting with a letter or digit")
    return value


DeviceId = Annotated[
    str,
    Field(pattern=DEVICE_ID_REGEX, examples=["dev-000001"]),
    AfterValidator(_device_id),
]


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {value!r}: use an IANA name such as Europe/Paris") from None
    return value


# PostgreSQL text cannot hold NUL characters: refuse them at the door (documented in the OpenAPI pattern).
NO_NUL = r"^[^\x00]*$"
TzName = Annotated[str, Field(max_length=64, examples=["Europe/Paris"]), AfterValidator(_zone)]
TzOffset = Annotated[int, Field(ge=-720, le=840, description="minutes east of UTC")]
Text = Annotated[str, Field(max_length=200, pattern=NO_NUL)]


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class Problem(BaseModel):
    detail: str


# --- devices ----------------------------------------------------------------------------------------


class Contraindications(BaseModel):
    """Flags declared by the user (DOMAIN.md section 3); they gate protocol pushes, not telemetry."""

    model_config = ConfigDict(extra="forbid")

    pregnancy: bool = False
    implanted_electronics: bool = False
    epilepsy: bool = False
    active_cancer: bool = False
    under_18: bool = False
    recent_surgery: bool = False
    metal_implants: bool = False
    thyroid_condition: bool = False
    neck_contraindication: bool = False
    diabetes: bool = False
    birth_date: date | None = None
    last_surgery_on: date | None = None


class ProfileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tz: TzName | None = Field(default=None, description="IANA time zone of the user, e.g. Europe/Paris")
    tz_offset_min: TzOffset | None = Field(
        default=None, description="fixed offset; default: the zone's current one"
    )
    contraindications: Contraindications = Contraindications()
    notes: Annotated[str, Field(max_length=2000, pattern=NO_NUL)] | None = None


class Profile(BaseModel):
    """A stored profile (read back as stored: no input validation on the way out)."""

    device_id: str
    tz: str | None
    tz_offset_min: int | None
    contraindications: Contraindications | None = Field(
        description="null when withheld: reading it needs a token with the health_data grant"
    )
    notes: str | None
    health_data_withheld: bool = Field(
        default=False, description="true: contraindications and notes are withheld from this token"
    )
    created_at: datetime
    updated_at: datetime
    updated_by: str | None


class DeviceRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: DeviceId
    model: Text
    hw_rev: Text | None = None
    profile: ProfileIn = ProfileIn()


class DeviceState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class Device(BaseModel):
    device_id: str
    model: str | None
    hw_rev: str | None
    fw_version: str | None
    protocol_id: str | None
    protocol_version: int | None
    state: DeviceState | None
    last_seen: datetime | None
    last_seq: int | None
    outbox_depth: int | None
    outbox_dropped: int | None
    battery_pct: float | None
    tz_offset_min: int | None
    first_seen: datetime
    updated_at: datetime | None
    registered: bool
    tags: list[str] = Field(
        default=[], description="fleet groups (devices.tags): rollouts and protocols target them"
    )


class DeviceDetail(Device):
    profile: Profile | None


class DevicePage(BaseModel):
    items: list[Device]
    next_after: str | None = Field(description="pass as `after` to get the next page; null: last page")


class DeviceCredentials(BaseModel):
    device_id: str
    username: str
    password: str = Field(description="shown once; store it on the device")
    mqtt_url: str = Field(description="broker URL with the credentials, for the agent's MICROFLEET_MQTT_URL")


# --- sessions ---------------------------------------------------------------------------------------


class SessionBrief(BaseModel):
    device_id: str
    session_id: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    duration_active_s: float | None
    level_start: int | None
    level_max: int | None
    current_ua_mean: float | None
    current_ua_max: float | None


class Session(SessionBrief):
    tz_offset_min: int | None
    protocol_id: str | None
    protocol_version: int | None
    fw_version: str | None
    duration_on_s: float | None
    samples: int | None
    level_changes_up: int | None
    level_changes_down: int | None
    boost_active_s: float | None
    current_ua_p95: float | None
    voltage_v_p95: float | None
    impedance_ohm_median: float | None
    impedance_ohm_p95: float | None
    impedance_ohm_max: float | None
    contact_ok_ratio: float | None
    impedance_spikes: int | None
    charging_during_output: bool | None
    battery_pct_start: float | None
    battery_pct_end: float | None
    zones: Any = Field(default=None, description="per-zone dwell, as reported by the device")
    received_at: datetime


# --- usage, quarantine, tokens, health --------------------------------------------------------------

Grain = Literal["hour", "day"]


class UsageBucket(BaseModel):
    bucket: datetime
    samples: int
    active_s: int
    current_ua_avg: float | None
    current_ua_max: float | None
    level_max: int | None = None
    devices: int | None = None


class Usage(BaseModel):
    scope: str = Field(description="a device id, or 'fleet'")
    grain: Grain
    since: datetime
    until: datetime
    buckets: list[UsageBucket]


class ReasonCount(BaseModel):
    reason: str
    count: int


class QuarantineItem(BaseModel):
    id: int
    received_at: datetime
    topic: str
    reason: str
    detail: str | None
    consumer: str | None
    payload_size: int
    payload_sha256: str


class QuarantineDetail(QuarantineItem):
    payload_base64: str


class QuarantinePage(BaseModel):
    since: datetime
    until: datetime
    counts: list[ReasonCount] = Field(description="rows per reason in the window (all reasons)")
    items: list[QuarantineItem] = Field(description="newest first, filtered by reason if given")


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=NO_NUL)]
    role: Role
    health_data: bool = Field(
        default=False,
        description="may read devices' health data (contraindications, notes); every read is audited. "
        "Not implied by any role, admin included",
    )


class Token(BaseModel):
    id: int
    name: str
    role: Role
    health_data: bool
    created_at: datetime
    revoked_at: datetime | None


class NewToken(Token):
    token: str = Field(description="shown once; send it as `Authorization: Bearer <token>`")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    database: bool
    storage_path: str | None
    missing_migrations: list[str]
    detail: str | None = None
