"""The real IngestService in a child process, for simulator tests that load the parent's GIL already.

    python -m tests.sim.ingest_process <database_url> <mqtt_url> <consumer_id> <late_horizon_days>

prints `ready` once subscribed, then runs until SIGTERM/SIGINT, when it flushes, commits and acks what
is pending (IngestService.stop) and exits 0. `IngestProcess` is the owner on the test side.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from types import FrameType
from typing import IO

READY = "ready"


class IngestProcess:
    """Starts the child, waits (bounded) for `ready`; `stop()` sends SIGTERM and reaps it."""

    def __init__(self, database_url: str, mqtt_url: str, consumer_id: str, late_horizon_days: int) -> None:
        args = [database_url, mqtt_url, consumer_id, str(late_horizon_days)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.sim.ingest_process", *args],
            stdout=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(out.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not line or line[0].strip() != READY:
            self.stop()
            raise AssertionError(f"ingest process not ready within {timeout_s} s (exit {self.proc.poll()})")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def main(argv: list[str]) -> int:
    from cloud.config import CloudConfig
    from cloud.ingest.service import IngestService

    dsn, url, consumer_id, days = argv
    cfg = CloudConfig(database_url=dsn, mqtt_url=url, consumer_id=consumer_id)
    service = IngestService(cfg, housekeeping=False, late_horizon=timedelta(days=int(days)))
    done = threading.Event()

    def handler(_sig: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    service.start()
    try:
        deadline = time.monotonic() + 15
        while not service.consumer.subscribed_event.wait(0.1):
            if done.is_set() or time.monotonic() > deadline:
                return 1
        print(READY, flush=True)
        done.wait()
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
