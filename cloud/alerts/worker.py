"""A background worker that drains a table-backed outbox in rounds: the shape shared by the device
notice delivery and the webhook sink. It owns its thread; `stop()` sets it down and joins it."""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg

log = logging.getLogger(__name__)


class OutboxWorker:
    """Subclasses implement `round(conn) -> bool` (True: a full batch was found, more may be due)."""

    name = "outbox"
    autocommit = False

    def __init__(self, database_url: str, timer_s: float, join_timeout_s: float) -> None:
        self._database_url, self._timer_s, self._join_timeout_s = database_url, timer_s, join_timeout_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"alerts-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self._join_timeout_s)

    def wake(self) -> None:
        self._wake.set()

    def round(self, conn: psycopg.Connection[Any]) -> bool:
        raise NotImplementedError

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            self._wake.wait(self._timer_s)
            self._wake.clear()
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._database_url, autocommit=self.autocommit, connect_timeout=5)
                while self.round(conn) and not self._stop.is_set():
                    pass
            except psycopg.Error as exc:
                log.warning("%s round failed (%s); retrying in %.1f s", self.name, exc, self._timer_s)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()
