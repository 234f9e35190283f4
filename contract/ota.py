"""Firmware over the air: the signed manifest, the job a device receives, and the checks both sides run.

- `FirmwareManifest`: what a release is (version, anti-rollback `version_code`, the models and hardware
  revisions it fits, SHA-256 and size of the artifact, the battery it needs). The cloud signs it with
  `contract.signing.SigningKey`; a device trusts it only through its `TrustStore`.
- `OtaJob`: retained desired state on `mf/v1/<id>/down/ota` (`action` install or cancel). An empty
  retained message clears it.
- `OtaReport` / `OtaState` (in contract.messages, re-exported here): the device's progress, uplink.
- `refusal()`: the checks the cloud runs before it publishes a job and the device runs again before it
  downloads a byte (model, hardware revision, anti-rollback floor). Each refusal is a clear sentence.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

import msgspec

from contract import SCHEMA_VERSION
from contract.errors import ContractError, Reason
from contract.messages import AwareDatetime, DeviceId, OtaReport, OtaState
from contract.signing import SignedDocument, TrustStore
from contract.topics import Downlink, parse_downlink

__all__ = [
    "TERMINAL",
    "FirmwareManifest",
    "OtaAction",
    "OtaJob",
    "OtaReport",
    "OtaState",
    "decode_job",
    "refusal",
    "verify_manifest",
]

TERMINAL = frozenset({OtaState.SUCCEEDED, OtaState.FAILED, OtaState.ROLLED_BACK, OtaState.CANCELLED})
Sha256Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]
Version = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class FirmwareManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    version: Version
    version_code: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]  # anti-rollback number
    models: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)]
    hw_revs: tuple[str, ...] = ()  # empty: every hardware revision
    sha256: Sha256Hex
    size: Annotated[int, msgspec.Meta(gt=0)]
    artifact: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]  # file name in the artifact store
    min_battery_pct: Annotated[float, msgspec.Meta(ge=0.0, le=100.0)] = 30.0
    released_at: AwareDatetime | None = None


class OtaAction(StrEnum):
    INSTALL = "install"
    CANCEL = "cancel"


class OtaJob(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="kind", tag="ota"
):
    """Retained on `mf/v1/<id>/down/ota`. A cancel keeps the job id: it replaces the install it stops."""

    schema_version: int = SCHEMA_VERSION
    device_id: DeviceId
    ts: AwareDatetime
    job_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    rollout_id: Annotated[int, msgspec.Meta(ge=0)] = 0
    action: OtaAction = OtaAction.INSTALL
    manifest: SignedDocument | None = None  # required for install
    url: Annotated[str, msgspec.Meta(max_length=500)] = ""  # where to download the artifact
    deadline: AwareDatetime | None = None  # give up (failed, retryable) if not installed by then


_job_decoder = msgspec.json.Decoder(OtaJob)


def decode_job(topic: str, payload: bytes) -> OtaJob:
    """Decode a job addressed to one device, or raise ContractError saying why not."""
    device_id, kind = parse_downlink(topic)
    if kind is not Downlink.OTA:
        raise ContractError(Reason.TOPIC_MISMATCH, f"{topic!r} is not an OTA topic")
    try:
        job = _job_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise ContractError(Reason.SCHEMA, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ContractError(Reason.NOT_JSON, str(exc)) from None
    if job.schema_version != SCHEMA_VERSION:
        raise ContractError(Reason.UNKNOWN_VERSION, f"schema_version {job.schema_version} is not supported")
    if job.device_id != device_id:
        raise ContractError(Reason.DEVICE_MISMATCH, f"job for {job.device_id!r} on {topic!r}")
    if job.action is OtaAction.INSTALL and (job.manifest is None or not job.url):
        raise ContractError(Reason.SCHEMA, "an install job needs a signed manifest and a url")
    return job


def verify_manifest(doc: SignedDocument, trust: TrustStore, now: datetime) -> FirmwareManifest:
    """The manifest, if its signature verifies with a trusted key (else SignatureError says why)."""
    manifest: FirmwareManifest = trust.verify_as(doc, now, FirmwareManifest)
    return manifest


def refusal(manifest: FirmwareManifest, *, model: str, hw_rev: str, floor_code: int) -> str | None:
    """Why a device of `model`/`hw_rev` whose anti-rollback floor is `floor_code` must not install this
    release (None: it may). The same sentence is written by the cloud and by the device."""
    if model not in manifest.models:
        return f"firmware {manifest.version} is for models {', '.join(manifest.models)}, not {model!r}"
    if manifest.hw_revs and hw_rev not in manifest.hw_revs:
        return (
            f"firmware {manifest.version} is for hardware revisions {', '.join(manifest.hw_revs)}, "
            f"not {hw_rev!r}"
        )
    if manifest.version_code < floor_code:
        return (
            f"anti-rollback: firmware {manifest.version} has version_code {manifest.version_code}, below the "
            f"device's floor {floor_code}; publish a release with version_code >= {floor_code}"
        )
    return None


def report_of(payload: bytes) -> OtaReport:
    """Decode an OtaReport without topic checks (tools, tests)."""
    return msgspec.json.decode(payload, type=OtaReport)
