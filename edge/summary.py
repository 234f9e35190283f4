"""The session summary, computed from the 1 Hz samples (pure).

Definitions (DOMAIN §5.1, adapted to what a 1 Hz stream can see):
- a sample is *active* when it has contact and current flows; each sample stands for one second;
- current, voltage and impedance statistics are taken over active samples (without contact the
  impedance is open circuit and the current zero, which would only dilute the figures);
- percentiles use the nearest-rank method: p95 is the smallest value with >= 95 % of values <= it;
- an impedance spike is a step between consecutive active samples by more than 3x either way;
- zone dwell counts the samples spent in each zone, in order of first visit.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field

from contract.messages import SessionSummary, Zone, ZoneDwell

SPIKE_RATIO = 3.0
SAMPLE_PERIOD_S = 1.0


def nearest_rank(sorted_values: array[float] | list[float], q: float) -> float:
    """The q-quantile (0 < q <= 1) of already sorted values by nearest rank; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[rank - 1])


def median(sorted_values: array[float] | list[float]) -> float:
    n = len(sorted_values)
    if n == 0:
        return 0.0
    mid = n // 2
    return float(sorted_values[mid]) if n % 2 else (sorted_values[mid - 1] + sorted_values[mid]) / 2.0


@dataclass(slots=True)
class SummaryAccumulator:
    """Running state for one session: compact arrays (8 bytes a value), counters and zone dwell."""

    level_start: int
    level_max: int = 0
    level_changes_up: int = 0
    level_changes_down: int = 0
    samples: int = 0
    contact_samples: int = 0
    impedance_spikes: int = 0
    current: array[float] = field(default_factory=lambda: array("d"))
    voltage: array[float] = field(default_factory=lambda: array("d"))
    impedance: array[float] = field(default_factory=lambda: array("d"))
    zones: dict[Zone, int] = field(default_factory=dict)
    _last_impedance: float | None = None

    def __post_init__(self) -> None:
        self.level_max = max(self.level_max, self.level_start)

    def add(
        self, current_ua: float, voltage_v: float, impedance_ohm: float, contact: bool, zone: Zone | None
    ) -> None:
        self.samples += 1
        if zone is not None:
            self.zones[zone] = self.zones.get(zone, 0) + 1
        if not contact:
            return
        self.contact_samples += 1
        if current_ua <= 0:
            return
        last = self._last_impedance
        if last is not None and last > 0 and impedance_ohm > 0:
            ratio = impedance_ohm / last
            if ratio > SPIKE_RATIO or ratio < 1 / SPIKE_RATIO:
                self.impedance_spikes += 1
        self._last_impedance = impedance_ohm
        self.current.append(current_ua)
        self.voltage.append(voltage_v)
        self.impedance.append(impedance_ohm)

    def level_changed(self, old: int, new: int) -> None:
        if new > old:
            self.level_changes_up += 1
        elif new < old:
            self.level_changes_down += 1
        self.level_max = max(self.level_max, new)

    def summary(self, duration_on_s: float) -> SessionSummary:
        current = sorted(self.current)
        voltage = sorted(self.voltage)
        impedance = sorted(self.impedance)
        active = len(current)
        return SessionSummary(
            duration_on_s=max(0.0, duration_on_s),
            duration_active_s=active * SAMPLE_PERIOD_S,
            samples=self.samples,
            level_start=self.level_start,
            level_max=self.level_max,
            level_changes_up=self.level_changes_up,
            level_changes_down=self.level_changes_down,
            current_ua_mean=math.fsum(current) / active if active else 0.0,
            current_ua_p95=nearest_rank(current, 0.95),
            current_ua_max=current[-1] if active else 0.0,
            voltage_v_p95=nearest_rank(voltage, 0.95),
            impedance_ohm_median=median(impedance),
            impedance_ohm_p95=nearest_rank(impedance, 0.95),
            impedance_ohm_max=impedance[-1] if active else 0.0,
            contact_ok_ratio=self.contact_samples / self.samples if self.samples else 1.0,
            impedance_spikes=self.impedance_spikes,
            zones=tuple(ZoneDwell(zone, n * SAMPLE_PERIOD_S) for zone, n in self.zones.items()),
        )
