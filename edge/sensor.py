"""The Sensor port: something that measures the output once a second while a session runs.

Real firmware reads its ADC here; the simulator plugs in a seeded model (simulators/sensor.py); the
`DemoSensor` below gives `microfleet edge run` a plausible, deterministic signal on good gel.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from contract.messages import Zone

LEVEL_MIN_UA = 80.0
LEVEL_MAX_UA = 400.0
LEVELS = 5


@dataclass(frozen=True, slots=True)
class Reading:
    """One 1 Hz measurement. The level is not measured: the session recorder knows the setpoint."""

    t: datetime
    current_ua: float
    voltage_v: float
    impedance_ohm: float
    contact: bool
    zone: Zone | None


class Sensor(Protocol):
    def read(self, now: datetime, level: int) -> Reading: ...


def level_setpoint_ua(level: int) -> float:
    """Level 1..5 -> 80..400 µA, linear (DOMAIN §1.1; the exact mapping is unpublished, an assumption)."""
    clamped = max(1, min(LEVELS, level))
    return LEVEL_MIN_UA + (LEVEL_MAX_UA - LEVEL_MIN_UA) * (clamped - 1) / (LEVELS - 1)


class DemoSensor:
    """Good gel, steady contact, a slow walk over the face; seeded, so runs are reproducible."""

    ZONES = (Zone.JAW_L, Zone.CHEEK_L, Zone.FOREHEAD, Zone.CHEEK_R, Zone.JAW_R, Zone.NECK)

    def __init__(self, seed: int = 0, dwell_s: int = 30) -> None:
        self._rng = random.Random(seed)
        self._dwell_s = dwell_s
        self._n = 0

    def read(self, now: datetime, level: int) -> Reading:
        zone = self.ZONES[(self._n // self._dwell_s) % len(self.ZONES)]
        self._n += 1
        impedance = self._rng.uniform(4_000.0, 8_000.0)
        current = level_setpoint_ua(level) * self._rng.uniform(0.97, 1.0)
        return Reading(
            now, round(current, 1), round(current * 1e-6 * impedance, 3), round(impedance), True, zone
        )
