"""Real services for tests: a private mosquitto started from the project's configuration, scratch
PostgreSQL databases, and a TCP proxy that can cut a connection. Nothing here is a mock."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from cli.localbroker import MOSQUITTO_CONF, ROOT, Mosquitto, free_port, wait_port

__all__ = [
    "MOSQUITTO_CONF",
    "ROOT",
    "Mosquitto",
    "TcpProxy",
    "free_port",
    "scratch_database",
    "secure_broker",
    "wait_port",
]
ADMIN_DSN = os.environ.get("MICROFLEET_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


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
