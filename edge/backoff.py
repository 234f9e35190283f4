"""Reconnect delays: capped exponential backoff with full jitter (pure; the random source is injected).

delay(n) = uniform(0, min(cap, initial * MULTIPLIER ** n)). Full jitter spreads a fleet that lost the
broker at the same moment over the whole window instead of reconnecting in waves.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

INITIAL_DELAY_S = 1.0
MAX_DELAY_S = 60.0
MULTIPLIER = 2.0


@dataclass(slots=True)
class Backoff:
    initial_s: float = INITIAL_DELAY_S
    cap_s: float = MAX_DELAY_S
    multiplier: float = MULTIPLIER
    random: Callable[[], float] = field(default=random.random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.cap_s or self.multiplier < 1:
            raise ValueError("need 0 < initial_s <= cap_s and multiplier >= 1")

    def ceiling(self, attempt: int) -> float:
        """The largest delay for the given attempt (0-based)."""
        # compare exponents first so that a long outage never overflows a float
        if attempt > 1000:
            return self.cap_s
        return min(self.cap_s, self.initial_s * self.multiplier**attempt)

    def next_delay(self) -> float:
        delay = self.random() * self.ceiling(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
