"""A private mosquitto started from the project's configuration, on a free port.

Used by `microfleet demo` (so the demo runs on the project's broker settings whatever the machine's
broker is configured with) and by the tests (each test that restarts or reconfigures a broker gets one).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], kill: bool = False, timeout_s: float = 30.0) -> None:
    """SIGTERM (mosquitto saves its database on the way out) or SIGKILL (it loses what it queued since its
    last autosave), and wait for it; one that does not stop within timeout_s is killed."""
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Mosquitto:
    """A mosquitto process of our own, on a free port, with the project's configuration.

    `stop()`/`start()` restart it on the same port with the same persistence folder, so persistent
    sessions and queued messages survive, as they do in production."""

    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mf-mosq-")))
    extra_conf: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_conf(self) -> Path:
        text = MOSQUITTO_CONF.read_text()
        text = re.sub(r"^listener .*$", f"listener {self.port} 127.0.0.1", text, flags=re.M)
        text = re.sub(r"^persistence_location .*$", f"persistence_location {self.workdir}/", text, flags=re.M)
        # a short save interval for tests that restart; tests of what ships (the real interval, dynamic
        # security, service identities) use tests/support/services.production_broker
        text = re.sub(r"^autosave_interval .*$", "autosave_interval 1", text, flags=re.M)
        if os.geteuid() == 0:
            # mosquitto started as root drops to the `mosquitto` user, which cannot write our private
            # folder (persistence, dynamic-security file): keep the test broker's own identity instead.
            text += "\nuser root\n"
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(text + "\n" + self.extra_conf + "\n")
        return conf

    def start(self) -> None:
        conf = self._write_conf()
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
        wait_port(self.port)

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            stop_process(self.proc, kill)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
