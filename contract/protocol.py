"""Treatment protocols: what a session may do, as a versioned document, and the hard limits of each
device model that no protocol may break. Pure: the cloud checks a protocol before it signs and
publishes it, and the device checks it again before it applies it (never trust the sender alone).

Sources for the defaults: shared/DOMAIN.md section 1 (NuFACE 80-400 µA, ELE head 53-192 µA for the eye
area, 20-min auto-off K201680, professional 10-600 µA, <=200 µA on the face in practice) and section 2
(5 days/week for 60 days, then 2-3 times a week).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from contract.messages import AwareDatetime, Zone

PROTOCOL_SCHEMA_VERSION = 1
EYE_ZONES = frozenset({Zone.UNDER_EYE_L, Zone.UNDER_EYE_R})
Positive = Annotated[float, msgspec.Meta(gt=0)]


class ModelLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The hard envelope of a device model (its clearance), not a treatment choice. The one catalogue of
    models: protocols are checked against it, and the alert rules take their hardware parameters from it."""

    model: str
    rated_max_current_ua: float
    eye_max_current_ua: float
    auto_off_s: int
    restricted_zones: frozenset[Zone] = frozenset({Zone.ORBITAL, Zone.TEMPLE})
    professional: bool = False  # one device serves many clients (per-person rules cannot apply)
    max_level: int = 5
    level1_ua: float = 80.0  # level 1..max_level maps linearly onto level1_ua..rated (DOMAIN.md 8: assumed)
    electrode_area_cm2: float = 1.0  # for current density (IEC 60601-2-10; areas assumed, DOMAIN.md T6)


MODEL_LIMITS: dict[str, ModelLimits] = {
    m.model: m
    for m in (
        # NuFACE-class at-home device: 80-400 µA over 5 levels (K103472), 20-min auto-off (K201680)
        ModelLimits(model="mf-home-1", rated_max_current_ua=400, eye_max_current_ua=192, auto_off_s=1200),
        ModelLimits(model="mf-home-mini", rated_max_current_ua=350, eye_max_current_ua=192, auto_off_s=1200),
        # small-area head for eyes and lips: 53-192 µA (K131251)
        ModelLimits(
            model="mf-home-ele",
            rated_max_current_ua=192,
            eye_max_current_ua=192,
            auto_off_s=1200,
            restricted_zones=frozenset({Zone.TEMPLE}),
            level1_ua=53,
            electrode_area_cm2=0.3,
        ),
        # clinic stimulator: 10-600 µA in steps, small probes (pantheon); <=200 µA on the face in practice
        ModelLimits(
            model="mf-pro-1",
            rated_max_current_ua=600,
            eye_max_current_ua=200,
            auto_off_s=3600,
            restricted_zones=frozenset({Zone.TEMPLE}),
            professional=True,
            max_level=12,
            level1_ua=10,
            electrode_area_cm2=0.1,
        ),
    )
}


class ZoneLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    zone: Zone
    max_current_ua: Positive
    max_dwell_s: Positive


class PhaseSchedule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_days_per_week: Annotated[int, msgspec.Meta(ge=1, le=7)]
    min_rest_days_per_week: Annotated[int, msgspec.Meta(ge=0, le=6)] = 1


class TreatmentProtocol(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A versioned treatment protocol. A zone that is not listed is not allowed at all."""

    schema_version: int = PROTOCOL_SCHEMA_VERSION
    protocol_id: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}\Z")]
    version: Annotated[int, msgspec.Meta(ge=1)]
    models: tuple[str, ...]
    variant: str = "standard"  # standard | sensitive | pro
    issued_at: AwareDatetime
    level_current_ua: Annotated[tuple[Positive, ...], msgspec.Meta(min_length=1, max_length=20)]
    default_level: int = 1
    zones: Annotated[tuple[ZoneLimit, ...], msgspec.Meta(min_length=1)]
    session_max_s: Annotated[int, msgspec.Meta(gt=0)] = 600
    sessions_per_day_max: Annotated[int, msgspec.Meta(ge=1)] = 1
    daily_active_max_s: Annotated[int, msgspec.Meta(gt=0)] = 1200
    intensive_days: Annotated[int, msgspec.Meta(ge=0)] = 60
    intensive: PhaseSchedule = PhaseSchedule(max_days_per_week=5)
    maintenance: PhaseSchedule = PhaseSchedule(max_days_per_week=3, min_rest_days_per_week=2)
    notices: dict[str, str] = {}

    def zone_limit(self, zone: Zone) -> ZoneLimit | None:
        return next((z for z in self.zones if z.zone == zone), None)

    def current_for_level(self, level: int) -> float:
        """µA for a level (1-based); levels beyond the table take its last entry."""
        index = min(max(level, 1), len(self.level_current_ua)) - 1
        return self.level_current_ua[index]


class Violation(msgspec.Struct, frozen=True):
    field: str
    value: float | str
    limit: float | str
    message: str

    def __str__(self) -> str:
        return f"{self.field}={self.value}: {self.message} (limit {self.limit})"


class ProtocolRejected(ValueError):
    def __init__(self, protocol_id: str, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__(f"protocol {protocol_id} breaks hard limits: " + "; ".join(map(str, violations)))


def violations(protocol: TreatmentProtocol, limits: ModelLimits) -> list[Violation]:
    """Every way `protocol` breaks the hard limits of `limits.model`; empty if it is safe to apply."""
    found: list[Violation] = []
    if limits.model not in protocol.models:
        found.append(
            Violation("models", ",".join(protocol.models), limits.model, "protocol is not for this model")
        )
    for i, ua in enumerate(protocol.level_current_ua, start=1):
        if ua > limits.rated_max_current_ua:
            found.append(
                Violation(
                    f"level_current_ua[{i}]",
                    ua,
                    limits.rated_max_current_ua,
                    "above the model's rated maximum",
                )
            )
    for z in protocol.zones:
        field = f"zones[{z.zone.value}].max_current_ua"
        if z.zone in limits.restricted_zones:
            found.append(Violation(field, z.max_current_ua, 0, "zone is restricted for this model"))
        elif z.zone in EYE_ZONES and z.max_current_ua > limits.eye_max_current_ua:
            found.append(
                Violation(field, z.max_current_ua, limits.eye_max_current_ua, "above the eye-area cap")
            )
        elif z.max_current_ua > limits.rated_max_current_ua:
            found.append(
                Violation(field, z.max_current_ua, limits.rated_max_current_ua, "above the rated maximum")
            )
    if protocol.session_max_s > limits.auto_off_s:
        found.append(
            Violation("session_max_s", protocol.session_max_s, limits.auto_off_s, "longer than auto-off")
        )
    if not 1 <= protocol.default_level <= len(protocol.level_current_ua):
        found.append(
            Violation(
                "default_level", protocol.default_level, len(protocol.level_current_ua), "not a defined level"
            )
        )
    return found


def check(protocol: TreatmentProtocol, model: str) -> None:
    """Raise ProtocolRejected (naming each field and limit) unless `protocol` is safe on `model`."""
    limits = MODEL_LIMITS.get(model)
    if limits is None:
        raise ProtocolRejected(
            protocol.protocol_id, [Violation("model", model, "known model", "unknown model")]
        )
    found = violations(protocol, limits)
    if found:
        raise ProtocolRejected(protocol.protocol_id, found)


def starter_protocol(issued_at: datetime, model: str = "mf-home-1") -> TreatmentProtocol:
    """The at-home default: 5 levels over 80-400 µA (K103472), eye area on the ELE cap, 10-min sessions."""
    face = tuple(
        ZoneLimit(z, 400.0, 90.0)
        for z in (Zone.FOREHEAD, Zone.CHEEK_L, Zone.CHEEK_R, Zone.JAW_L, Zone.JAW_R, Zone.NECK, Zone.LIP)
    )
    eyes = tuple(ZoneLimit(z, 150.0, 45.0) for z in sorted(EYE_ZONES))
    return TreatmentProtocol(
        protocol_id="home-starter",
        version=1,
        models=(model,),
        issued_at=issued_at,
        level_current_ua=(80.0, 160.0, 240.0, 320.0, 400.0),
        default_level=2,
        zones=face + eyes,
        session_max_s=600,
        notices={"rest_day": "Take a rest day tomorrow: your skin recovers between sessions."},
    )
