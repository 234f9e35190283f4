"""Simulated time for a fleet: a discrete-event clock that the simulated users drive.

`SimClock` keeps virtual time. Simulated users (the device tasks) sleep on it; a scheduler task owned by
the clock advances virtual time to the earliest wake-up only when every user task that was woken has gone
back to sleep (a barrier), so a run is the same for a given seed however slow the machine is, and a
burst of CPU work never skews timestamps.

- `speed=None`: as fast as the CPU allows (weeks of use in minutes: the compressed scenarios);
- `speed=S`: virtual time never runs ahead of `S` x real time (`S=1`: real time, for load tests). If the
  machine cannot keep up, virtual time falls behind instead of stamping samples at the wrong second.

The agents (edge code) get `agent_view(offset_s)`: `now()`/`monotonic()` read virtual time (plus a clock
skew offset for the fault), `sleep()` (the link's reconnect backoff) runs in REAL seconds, because the
network is real.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from datetime import datetime, timedelta


class SimClock:
    def __init__(self, start: datetime, *, speed: float | None = None) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be an aware datetime")
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be > 0 or None (as fast as possible), got {speed}")
        self.start = start
        self.speed = speed
        self._t = 0.0
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._real0 = time.monotonic()

    # -- the Clock protocol (edge.clock.Clock), for the simulated users ---------------------------------
    def now(self) -> datetime:
        return self.start + timedelta(seconds=self._t)

    def monotonic(self) -> float:
        return self._t

    async def sleep(self, seconds: float) -> None:
        """Sleep in virtual time. Only tasks registered with `user()` may call this."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self._t + max(0.0, seconds), next(self._order), fut))
        self._leave()
        try:
            await fut  # the scheduler counts this task as running again when it wakes it
        except asyncio.CancelledError:
            if fut.cancelled():  # cancelled while asleep: running again (its `exit()` will follow)
                self.enter()
            raise

    @property
    def sleepers(self) -> int:
        """How many user tasks wait for virtual time (a task that must not let the clock run before the
        users are all asleep holds it with `enter()` and waits for this count)."""
        return len(self._heap)

    # -- user task accounting ---------------------------------------------------------------------------
    def enter(self) -> None:
        """A user task starts running (call once, at its start)."""
        self._running += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._running -= 1
        if self._running <= 0:
            self._running = 0
            self._idle.set()

    def exit(self) -> None:
        """A user task ends (call once, in its `finally`)."""
        self._leave()

    # -- scheduler --------------------------------------------------------------------------------------
    def run_in_background(self) -> asyncio.Task[None]:
        if self._task is None:
            self._real0 = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._schedule(), name="simclock")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _, _, fut in self._heap:
            fut.cancel()
        self._heap.clear()

    async def _schedule(self) -> None:
        while True:
            await self._idle.wait()
            if not self._heap:
                await asyncio.sleep(0.001)
                continue
            t = self._heap[0][0]
            if self.speed is not None:
                ahead = (t / self.speed) - (time.monotonic() - self._real0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
                    continue  # someone may have scheduled an earlier wake-up meanwhile
            self._t = max(self._t, t)
            while self._heap and self._heap[0][0] <= self._t:
                _, _, fut = heapq.heappop(self._heap)
                if not fut.done():
                    self._running += 1
                    self._idle.clear()
                    fut.set_result(None)
            await asyncio.sleep(0)  # let the woken tasks run (and the network tasks between them)

    def agent_view(self, offset_s: float = 0.0) -> AgentClock:
        return AgentClock(self, offset_s)


class AgentClock:
    """What one edge agent sees: virtual time (plus a skew, for the clock-skew fault); real-time sleeps."""

    __slots__ = ("_clock", "offset_s")

    def __init__(self, clock: SimClock, offset_s: float = 0.0) -> None:
        self._clock = clock
        self.offset_s = offset_s

    def now(self) -> datetime:
        return self._clock.now() + timedelta(seconds=self.offset_s)

    def monotonic(self) -> float:
        return self._clock.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
