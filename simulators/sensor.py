"""A seeded simulated sensor: what the device would measure for a given persona.

- current follows the level on the persona's model scale (`setpoint_ua`: the model's level 1 to its rated
  maximum, contract.protocol.MODEL_LIMITS; mf-home-1: 1..5 -> 80..400 µA, mf-pro-1: 1..12 -> 10..600 µA),
  times the persona's `ua_scale`, with ±2 % noise;
- impedance on contact drifts around a per-session base drawn from the persona (good gel 3-10 kΩ,
  dry 40-150 kΩ), with occasional spikes (x4 for one second);
- voltage = I * R, capped at the compliance voltage; when capped, the current falls to V / R
  (dry skin: the device cannot push the setpoint, DOMAIN §1.3);
- contact is lost now and then (open circuit: no current, impedance 2 MΩ);
- the zone walks over the persona's zones with 15-40 s dwell.
"""

from __future__ import annotations

import random
from datetime import datetime

from contract.protocol import MODEL_LIMITS
from edge.sensor import Reading, level_setpoint_ua
from simulators.persona import Persona

COMPLIANCE_V = 15.0  # [ASSUMPTION] a battery device's output stage: 400 µA up to 37 kΩ
OPEN_CIRCUIT_OHM = 2_000_000.0
SPIKE_FACTOR = 4.0


def setpoint_ua(model: str, level: int) -> float:
    """The model's level -> µA map, linear from its level 1 to its rated maximum (an unknown model: the
    at-home 1..5 -> 80..400 µA of edge.sensor)."""
    m = MODEL_LIMITS.get(model)
    if m is None:
        return level_setpoint_ua(level)
    clamped = max(1, min(m.max_level, level))
    step = (m.rated_max_current_ua - m.level1_ua) / max(1, m.max_level - 1)
    return m.level1_ua + (clamped - 1) * step


class SimulatedSensor:
    __slots__ = ("_base", "_contact", "_dwell", "_persona", "_rng", "_zone_i")

    def __init__(self, persona: Persona, rng: random.Random) -> None:
        self._persona = persona
        self._rng = rng
        self._base = 0.0
        self._contact = True
        self._zone_i = 0
        self._dwell = 0
        self.begin_session()

    def begin_session(self) -> None:
        self._base = self._rng.uniform(*self._persona.impedance_ohm)
        self._contact = True
        self._zone_i = self._rng.randrange(len(self._persona.zones))
        self._dwell = self._rng.randint(15, 40)

    def read(self, now: datetime, level: int) -> Reading:
        p, rng = self._persona, self._rng
        self._dwell -= 1
        if self._dwell <= 0:
            self._zone_i = (self._zone_i + 1) % len(p.zones)
            self._dwell = rng.randint(15, 40)
        zone = p.zones[self._zone_i]
        if self._contact:
            self._contact = rng.random() >= p.contact_loss_per_s
        else:
            self._contact = rng.random() < 0.5
        if not self._contact:
            return Reading(now, 0.0, COMPLIANCE_V, OPEN_CIRCUIT_OHM, False, zone)
        self._base *= rng.uniform(0.98, 1.02)
        impedance = self._base * (SPIKE_FACTOR if rng.random() < p.spike_per_s else 1.0)
        current = setpoint_ua(p.model, level) * p.ua_scale * rng.uniform(0.98, 1.02)
        voltage = current * 1e-6 * impedance
        if voltage > COMPLIANCE_V:
            voltage = COMPLIANCE_V
            current = voltage / impedance * 1e6
        return Reading(now, round(current, 1), round(voltage, 3), round(impedance), True, zone)
