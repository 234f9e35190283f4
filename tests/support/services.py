"""Real services for tests: a private mosquitto started from the project's configuration, scratch
PostgreSQL databases, and a TCP proxy that can cut a connection. Nothing here is a mock."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
ADMIN_DSN = os.environ.get("MICROFLEET_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


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
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def scratch_database(prefix: str = "mf_test") -> Iterator[str]:
    """A new, empty PostgreSQL database; dropped afterwards. Yields its DSN."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    try:
        yield dsn
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `cut()` drops every open connection and refuses new ones
    until `heal()`. Used to cut the database or broker connection for real."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(128)
        self.port = int(self._server.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._cut = True
        with self._lock:
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._conns.clear()

    def heal(self) -> None:
        self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._server.close()


DYNSEC_PLUGINS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
)
SECURE_OVERLAY = ROOT / "deploy" / "mosquitto" / "secure.conf"


def secure_broker(admin_password: str = "admin-secret", tls_dir: Path | None = None) -> Mosquitto:
    """A mosquitto with the project's production overlay: no anonymous access, dynamic security
    initialised with an `admin` client, and (with `tls_dir` holding ca.crt/server.crt/server.key) the TLS
    listener on a free port (`broker.tls_port`). Not started: call `.start()`."""
    broker = Mosquitto()
    plugin = next((p for p in DYNSEC_PLUGINS if Path(p).exists()), None)
    if plugin is None:
        raise FileNotFoundError(
            "mosquitto_dynamic_security.so not found: install the Debian package mosquitto"
        )
    dynsec = broker.workdir / "dynamic-security.json"
    subprocess.run(
        ["mosquitto_ctrl", "dynsec", "init", str(dynsec), "admin", admin_password],
        check=True,
        capture_output=True,
    )
    overlay = SECURE_OVERLAY.read_text()
    overlay = overlay.replace("/usr/lib/mosquitto_dynamic_security.so", plugin)
    overlay = overlay.replace("/mosquitto/data/dynamic-security.json", str(dynsec))
    if tls_dir is None:
        overlay = overlay.split("# TLS listener", 1)[0]
    else:
        tls_port = free_port()
        broker.tls_port = tls_port  # type: ignore[attr-defined]
        overlay = overlay.replace("listener 8883", f"listener {tls_port} 127.0.0.1")
        overlay = overlay.replace("/mosquitto/certs", str(tls_dir))
    broker.extra_conf = overlay + "\nlog_type all\n"
    return broker
