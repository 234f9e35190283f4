"""A background worker that drains a table-backed outbox in rounds: the shape shared by the device
notice delivery and the webhook sink. It owns its thread (cloud.runtime.threads: a round that raises
anything but a database error takes the process down); `stop()` sets it down and joins it."""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg

from cloud.runtime.db import Database
from cloud.runtime.threads import Threads

log = logging.getLogger(__name__)


class OutboxWorker:
    """Subclasses implement `round(conn) -> bool` (True: a full batch was found, more may be due).

    `db`: the service's Database (its pool lends a connection per wake-up)."""

    name = "outbox"
    autocommit = False

    def __init__(self, db: Database, timer_s: float, join_timeout_s: float) -> None:
        self._db, self._timer_s, self._join_timeout_s = db, timer_s, join_timeout_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads = Threads("")

    def start(self) -> None:
        self._threads.spawn(f"alerts-{self.name}", self._run)

    def stop(self) -> None:
        self.signal_stop()
        self.join(self._join_timeout_s)

    def signal_stop(self) -> None:
        """Ask the thread to stop after its round (and wake it from its wait); `join` waits for it."""
        self._stop.set()
        self._wake.set()

    def join(self, timeout_s: float) -> list[str]:
        return self._threads.join(timeout_s)

    def wake(self) -> None:
        self._wake.set()

    def round(self, conn: psycopg.Connection[Any]) -> bool:
        raise NotImplementedError

    def _rounds(self, conn: psycopg.Connection[Any]) -> None:
        while self.round(conn) and not self._stop.is_set():
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._timer_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                with self._db.connection(autocommit=self.autocommit) as conn:
                    self._rounds(conn)
            except psycopg.Error as exc:
                log.warning("%s round failed (%s); retrying in %.1f s", self.name, exc, self._timer_s)
