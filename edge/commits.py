"""Pure: when the agent sends again what the cloud has not committed (the commit timer of edge/link.py).

The link reports every row it handed to the broker (taken by a PUBACK, or not taken: reason 0x10 or
>= 0x80) with the event loop's time, and every commit mark. The timer answers two questions:
  - is a re-send due? Yes when the oldest row sent and not yet covered by a mark has waited longer than
    the current timeout. The link then sends a SyncRequest and rewinds its drain (everything above the
    mark goes out again), and the timeout doubles, up to `timeout_max_s`, until a mark advances, which
    resets it to `timeout_s`;
  - may a SyncRequest be sent now because the outbox is filling up with sent rows waiting? At most once
    per timeout (`synced` records one; the SyncRequests of a connect or a re-send do not count).

Times are the event loop's (real time), never the agent's domain clock: simulators compress domain time
1000-fold while the cloud's mark delay is real. Marks are cumulative, so covering is a prefix: rows are
kept in the order they were sent (seq order within one pass over the outbox) and covered ones are popped
from the front.
"""

from __future__ import annotations

from collections import deque


class CommitTimer:
    def __init__(self, timeout_s: float, timeout_max_s: float, *, mark: int = -1) -> None:
        if not 0 < timeout_s <= timeout_max_s:
            raise ValueError("need 0 < timeout_s <= timeout_max_s")
        self.timeout_s = timeout_s
        self.timeout_max_s = timeout_max_s
        self.timeout = timeout_s  # the current one
        self.mark = mark  # the highest mark seen
        self._sent: deque[tuple[int, float]] = deque()
        self._last_sync: float | None = None

    def _prune(self) -> None:
        sent, mark = self._sent, self.mark
        while sent and sent[0][0] <= mark:
            sent.popleft()

    def sent(self, seq: int, now: float) -> bool:
        """A row went out at `now`. True if it is now the oldest one waiting (the deadline moved)."""
        if seq <= self.mark:
            return False
        self._prune()
        first = not self._sent
        self._sent.append((seq, now))
        return first

    def covered(self, through: int) -> bool:
        """A mark arrived. True if it advanced: the timeout is reset to its start value."""
        if through <= self.mark:
            return False
        self.mark = through
        self.timeout = self.timeout_s
        self._prune()
        return True

    @property
    def waiting(self) -> int:
        """Rows sent and not covered (a row sent twice in one pass counts twice)."""
        self._prune()
        return len(self._sent)

    def deadline(self) -> float | None:
        """When the oldest waiting row times out (None: nothing waits)."""
        self._prune()
        return self._sent[0][1] + self.timeout if self._sent else None

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def resent(self, now: float) -> None:
        """The link sent a SyncRequest and rewound its drain: start a new pass with a doubled timeout."""
        self._sent.clear()
        self.timeout = min(self.timeout * 2, self.timeout_max_s)

    def reset(self) -> None:
        """A new connection: the whole outbox goes out again; the timeout keeps its value."""
        self._sent.clear()

    def synced(self, now: float) -> None:
        """A SyncRequest for a filling outbox goes out now."""
        self._last_sync = now

    def may_sync(self, now: float) -> bool:
        """At most one SyncRequest for a filling outbox per current timeout."""
        return self._last_sync is None or now - self._last_sync >= self.timeout

    def filling(self, depth: int, size: int, max_rows: int, max_bytes: int, ratio: float, now: float) -> bool:
        """The outbox holds >= ratio of a bound, sent rows wait for a mark, and a SyncRequest may go."""
        full = depth >= ratio * max_rows or size >= ratio * max_bytes
        return full and self.waiting > 0 and self.may_sync(now)
