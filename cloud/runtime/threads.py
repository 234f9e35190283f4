"""Owned threads: named, started and joined by their owner; a thread that dies takes its process down.

A worker thread that ends with an exception used to leave its process up and doing nothing (the alert
engine once stopped evaluating while its process looked healthy). Here the exception is logged in one
clear line, with its traceback, and the process exits with EXIT_THREAD_DIED so that its supervisor
(systemd, docker, `microfleet ingest --processes N`) restarts it. Messages it held unacknowledged stay
with the broker, as after a crash.

    threads = Threads("ingest-1")
    threads.spawn("writer", self._write_loop)
    ...
    threads.join(timeout_s=15)        # stragglers are logged by name and returned
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

log = logging.getLogger(__name__)
EXIT_THREAD_DIED = 70  # EX_SOFTWARE: an internal error


def _exit_process(code: int) -> NoReturn:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # flushing is best effort on the way out
            handler.flush()
    sys.stderr.flush()
    os._exit(code)


# what a dying thread calls after logging; tests replace it to observe a death without exiting
on_fatal: Callable[[int], None] = _exit_process


def fatal(where: str, exc: BaseException) -> None:
    """Log `where` died and take the process down (see on_fatal)."""
    log.critical(
        "FATAL: %s died with %s: %s; the process exits (code %d) so its supervisor restarts it",
        where,
        type(exc).__name__,
        str(exc)[:500],
        EXIT_THREAD_DIED,
        exc_info=exc,
    )
    on_fatal(EXIT_THREAD_DIED)


def guarded(where: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` wrapped so an exception is fatal (for callbacks run on a thread we do not own, e.g. paho's)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:  # any escape stops the thread that called us
            fatal(where, exc)
            raise

    return run


class Threads:
    """The threads of one owner (a service): `spawn` starts one, `join` waits for all of them."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._threads: list[threading.Thread] = []

    def spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        full = f"{name}-{self.owner}" if self.owner else name

        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - see the module docstring
                fatal(f"thread {full}", exc)

        t = threading.Thread(target=run, name=full, daemon=True)
        t.start()
        self._threads.append(t)
        return t

    @property
    def alive(self) -> list[str]:
        return [t.name for t in self._threads if t.is_alive()]

    def join(self, timeout_s: float = 10.0) -> list[str]:
        """Join every thread within one shared deadline; returns (and logs) the names still running."""
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        stragglers = [t.name for t in self._threads if t.is_alive() and t is not threading.current_thread()]
        if stragglers:
            log.warning("%s: threads still running after %.1f s: %s", self.owner, timeout_s, stragglers)
        return stragglers
