"""Prometheus metrics of the OTA service, updated once per tick (the rollout progress it reads anyway).

microfleet_ota_rollouts{status}                  rollouts by status (running, paused, completed, ...)
microfleet_ota_rollout_jobs{rollout,state}       device jobs of each active rollout, by state
microfleet_ota_rollout_wave{rollout}             the wave an active rollout is in
microfleet_ota_jobs_published_total{action,outcome}   jobs (install, cancel) the broker took or refused
microfleet_ota_ticks_total, microfleet_ota_tick_failures_total, microfleet_ota_tick_seconds
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud.ota.rollout import WaveCounts

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Progress(Collector):
    """The last tick's view of the rollouts, replaced whole each tick."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[str, int] = {}
        self.jobs: dict[int, dict[str, int]] = {}
        self.waves: dict[int, int] = {}

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            statuses, jobs, waves = dict(self.statuses), dict(self.jobs), dict(self.waves)
        s = GaugeMetricFamily("microfleet_ota_rollouts", "Rollouts by status", labels=["status"])
        for status, n in sorted(statuses.items()):
            s.add_metric([status], n)
        yield s
        j = GaugeMetricFamily(
            "microfleet_ota_rollout_jobs",
            "Device jobs of each active rollout, by state",
            labels=["rollout", "state"],
        )
        for rollout, by_state in sorted(jobs.items()):
            for state, n in sorted(by_state.items()):
                j.add_metric([str(rollout), state], n)
        yield j
        w = GaugeMetricFamily(
            "microfleet_ota_rollout_wave", "The wave an active rollout is in", labels=["rollout"]
        )
        for rollout, wave in sorted(waves.items()):
            w.add_metric([str(rollout)], wave)
        yield w


class OtaMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.published = Counter(
            "microfleet_ota_jobs_published",
            "OTA jobs the broker took (sent) or did not (refused: sent again later)",
            ["action", "outcome"],
            registry=r,
        )
        self.ticks = Counter("microfleet_ota_ticks", "Rollout ticks", registry=r)
        self.tick_failures = Counter("microfleet_ota_tick_failures", "Ticks that failed", registry=r)
        self.tick_seconds = Histogram(
            "microfleet_ota_tick_seconds",
            "One tick over every active rollout",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self._progress = _Progress()
        r.register(self._progress)

    def progress(
        self, statuses: Mapping[str, int], active: Iterable[tuple[int, int, list[WaveCounts]]]
    ) -> None:
        """The rollouts by status, and (rollout id, wave, counts per wave) of each active one."""
        jobs: dict[int, dict[str, int]] = {}
        waves: dict[int, int] = {}
        for rollout, wave, counts in active:
            by_state: dict[str, int] = {}
            for c in counts:
                for state, n in c.by_state.items():
                    by_state[state] = by_state.get(state, 0) + n
            jobs[rollout], waves[rollout] = by_state, wave
        with self._progress.lock:
            self._progress.statuses = dict(statuses)
            self._progress.jobs, self._progress.waves = jobs, waves
