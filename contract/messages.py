"""The messages on the wire: frozen msgspec Structs, a `schema_version` and a `kind` tag in each.

Every uplink message carries the device id, a per-device sequence number `seq` that survives restarts
(the cloud counts loss and duplicates with it) and `ts`, the aware UTC time the device created it.
Natural keys make redelivery harmless: a sample is (device_id, t), a session (device_id, session_id),
an event (device_id, seq).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

import msgspec

from contract import SCHEMA_VERSION
from contract.topics import Uplink

AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
DeviceId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")]
SessionId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # a bigint in the database
Level = Annotated[int, msgspec.Meta(ge=0, le=100)]  # a smallint in the database
Count = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]  # an int in the database
Text = Annotated[str, msgspec.Meta(max_length=200)]
MAX_SAMPLES_PER_BATCH = 600


class Zone(StrEnum):
    """Facial zones. `orbital` and `temple` are restricted for the standard head (NuFACE Mini IFU)."""

    FOREHEAD = "forehead"
    CHEEK_L = "cheek_l"
    CHEEK_R = "cheek_r"
    JAW_L = "jaw_l"
    JAW_R = "jaw_r"
    NECK = "neck"
    UNDER_EYE_L = "under_eye_l"
    UNDER_EYE_R = "under_eye_r"
    LIP = "lip"
    ORBITAL = "orbital"
    TEMPLE = "temple"


class EndReason(StrEnum):
    USER = "user"
    AUTO_TIMER = "auto_timer"
    IDLE = "idle"
    LOW_BATT = "low_batt"
    CHARGER_LOCKOUT = "charger_lockout"
    FAULT = "fault"
    SAFETY_LIMIT = "safety_limit"


class EventType(StrEnum):
    LEVEL_CHANGE = "level_change"
    BOOST = "boost"
    CONTACT_LOST = "contact_lost"
    CONTACT_RESTORED = "contact_restored"
    INTERVENTION = "intervention"
    OUTBOX_OVERFLOW = "outbox_overflow"
    DISCOMFORT = "discomfort"
    NOTICE_SHOWN = "notice_shown"  # detail = notice_id
    NOTICE_ACK = "notice_ack"  # detail = notice_id: the user acknowledged it
    SESSION_REFUSED = "session_refused"  # detail = why (safety gate, daily limit, ...)
    PROTOCOL_APPLIED = "protocol_applied"  # value = version, detail = protocol_id
    PROTOCOL_REJECTED = "protocol_rejected"  # detail = reason


class DeviceState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class Sample(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One 1 Hz record inside a session, sent as a JSON array to keep batches small:
    `[t, current_ua, voltage_v, impedance_ohm, contact, zone, level]`."""

    t: AwareDatetime
    current_ua: float
    voltage_v: float
    impedance_ohm: float
    contact: bool
    zone: Zone | None
    level: Level


class ZoneDwell(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    zone: Zone
    dwell_s: float


class SessionSummary(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What the device computed over the whole session (shared/DOMAIN.md section 5.1)."""

    duration_on_s: float
    duration_active_s: float
    samples: Count
    level_start: Level
    level_max: Level
    level_changes_up: Count = 0
    level_changes_down: Count = 0
    boost_active_s: float = 0.0
    current_ua_mean: float = 0.0
    current_ua_p95: float = 0.0
    current_ua_max: float = 0.0
    voltage_v_p95: float = 0.0
    impedance_ohm_median: float = 0.0
    impedance_ohm_p95: float = 0.0
    impedance_ohm_max: float = 0.0
    contact_ok_ratio: float = 1.0
    impedance_spikes: Count = 0
    charging_during_output: bool = False
    battery_pct_start: float | None = None
    battery_pct_end: float | None = None
    zones: tuple[ZoneDwell, ...] = ()


class _Uplink(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", kw_only=True):
    schema_version: int = SCHEMA_VERSION
    device_id: DeviceId
    seq: Seq
    ts: AwareDatetime


class SessionStart(_Uplink, frozen=True, tag=Uplink.SESSION_START.value):
    session_id: SessionId
    started_at: AwareDatetime
    level: Level
    tz_offset_min: Annotated[int, msgspec.Meta(ge=-14 * 60, le=14 * 60)] = 0
    protocol_id: Text = ""
    protocol_version: Count = 0
    fw_version: Text = ""


class SampleBatch(_Uplink, frozen=True, tag=Uplink.SAMPLES.value):
    session_id: SessionId
    samples: Annotated[tuple[Sample, ...], msgspec.Meta(min_length=1, max_length=MAX_SAMPLES_PER_BATCH)]


class SessionEnd(_Uplink, frozen=True, tag=Uplink.SESSION_END.value):
    session_id: SessionId
    started_at: AwareDatetime
    ended_at: AwareDatetime
    end_reason: EndReason
    summary: SessionSummary


class DeviceEvent(_Uplink, frozen=True, tag=Uplink.EVENT.value, omit_defaults=True):
    event: EventType
    at: AwareDatetime
    session_id: SessionId | None = None
    level_from: Level | None = None
    level_to: Level | None = None
    value: float | None = None
    detail: Text = ""


class Status(_Uplink, frozen=True, tag=Uplink.STATUS.value, omit_defaults=True):
    """Retained birth message (online) and last will (offline). `seq` of a will is the seq at connect."""

    state: DeviceState
    model: Text = ""
    hw_rev: Text = ""
    fw_version: Text = ""
    protocol_id: Text = ""
    protocol_version: Count = 0
    outbox_depth: Count = 0
    outbox_dropped: Count = 0
    battery_pct: float | None = None


class OtaState(StrEnum):
    """Where a firmware job stands on the device. Terminal: succeeded, failed, rolled_back, cancelled."""

    QUEUED = "queued"
    DEFERRED = "deferred"  # waiting for the session to end or the battery to charge (reason says which)
    DOWNLOADING = "downloading"  # progress = share of bytes on the device
    VERIFYING = "verifying"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    HEALTH_CHECK = "health_check"
    SUCCEEDED = "succeeded"  # only after the reboot into the new firmware and a passed health check
    FAILED = "failed"  # reason says why; retryable says whether trying again can help
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"


class OtaReport(_Uplink, frozen=True, tag=Uplink.OTA.value, omit_defaults=True):
    """A firmware job's progress on `mf/v1/<id>/up/ota` (QoS 1), one message per state change.
    `fw_version` is the firmware the device runs when it sends the report (the truth after a rollback)."""

    job_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    state: OtaState
    rollout_id: Annotated[int, msgspec.Meta(ge=0)] = 0
    fw_version: Text = ""
    target_version: Text = ""
    progress: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    reason: Text = ""
    retryable: bool = False


UplinkMessage = SessionStart | SampleBatch | SessionEnd | DeviceEvent | Status | OtaReport


class SyncRequest(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="sync", kw_only=True
):
    """On `mf/v1/<id>/up/sync` (QoS 1): the device asks for its commit mark (a CommitMark downlink).

    Not telemetry and not in the outbox: it takes no sequence number of its own. The agent sends one after
    every (re)connect, when its outbox fills up, and when sent messages stay uncovered by a mark too long.
    `floor` is the lowest seq its outbox still holds (`next_seq` when it is empty): every seq below it was
    either committed (covered by an earlier mark) or given up by the outbox's overflow policy, so the cloud
    may move the device's mark up to `floor - 1` whatever it has seen. `next_seq` is the next number the
    device will give. `epoch` names this life of the device's outbox (made with it): a new epoch tells the
    cloud the device's numbering restarted (a reset outbox), so its mark restarts at the floor. The numbers
    alone cannot say so: a sync may be overtaken by later messages through another consumer of the shared
    group, and then look "older" than the mark without any reset.
    """

    schema_version: int = SCHEMA_VERSION
    device_id: DeviceId
    ts: AwareDatetime
    floor: Seq
    next_seq: Seq
    epoch: Annotated[str, msgspec.Meta(max_length=64)] = ""


KIND_OF: dict[type[_Uplink], Uplink] = {
    SessionStart: Uplink.SESSION_START,
    SampleBatch: Uplink.SAMPLES,
    SessionEnd: Uplink.SESSION_END,
    DeviceEvent: Uplink.EVENT,
    Status: Uplink.STATUS,
    OtaReport: Uplink.OTA,
}


def kind_of(message: UplinkMessage) -> Uplink:
    return KIND_OF[type(message)]


# --- downlink: cloud -> one device ------------------------------------------------------------------


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ALERT = "alert"
    CRITICAL = "critical"


class _Downlink(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", kw_only=True):
    schema_version: int = SCHEMA_VERSION
    device_id: DeviceId
    ts: AwareDatetime


class Notice(_Downlink, frozen=True, tag="notice", omit_defaults=True):
    """A message for the user, in plain words, on `mf/v1/<id>/down/notice` at QoS 1 (not retained).
    The agent shows it and answers with DeviceEvent(NOTICE_SHOWN / NOTICE_ACK, detail=notice_id)."""

    notice_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    severity: Severity
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    rule_id: Text = ""
    expires_at: AwareDatetime | None = None


class CommitMark(_Downlink, frozen=True, tag="committed"):
    """On `mf/v1/<id>/down/committed` (QoS 1, not retained): the end-to-end acknowledgement. Every message
    of this device with `seq <= through` is committed in the cloud's database (stored, or quarantined with
    its reason for a replay), or lies below a floor the device reported in a SyncRequest. The agent deletes
    those from its outbox and keeps (and in time re-sends) everything above. `through` is -1 before the
    first commit. Cumulative and monotonic: a lower mark than one already applied changes nothing."""

    through: Annotated[int, msgspec.Meta(ge=-1, le=2**63 - 1)]


class SafetyGate(_Downlink, frozen=True, tag="gate", omit_defaults=True):
    """Retained desired state on `mf/v1/<id>/down/gate`: while `blocked`, the agent refuses to start
    sessions (a contraindication in the user's profile). A device that was offline converges on reconnect."""

    blocked: bool
    reasons: tuple[Text, ...] = ()
    text: Annotated[str, msgspec.Meta(max_length=500)] = ""


# --- cloud-internal: ingest -> alert engine -------------------------------------------------------


class CommittedBatch(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    tag_field="kind",
    tag="committed_batch",
    kw_only=True,
):
    """On `mf/v1/_cloud/committed` (topics.COMMITTED_FEED, QoS 1, msgpack: contract.codec.encode_feed):
    the uplinks one ingest transaction stored that the alert engine evaluates, as the device sent them
    (topic, payload bytes), in the order ingest received them. Published only after the COMMIT; the
    batch's originals are acknowledged to the broker only after the broker took this message, so a crash
    in between re-sends the originals, ingest re-writes them (idempotent) and publishes them again: the
    engine sees every stored message at least once (its evaluation is idempotent). `consumer` names the
    ingest process, for logs."""

    schema_version: int = SCHEMA_VERSION
    consumer: Annotated[str, msgspec.Meta(max_length=128)] = ""
    messages: tuple[tuple[str, bytes], ...] = ()
