"""Real services for tests: a private mosquitto started from the project's configuration, scratch
PostgreSQL databases, and a TCP proxy that can cut a connection. Nothing here is a mock."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from cli.localbroker import MOSQUITTO_CONF, ROOT, Mosquitto, free_port, stop_process, wait_port

__all__ = [
    "MOSQUITTO_CONF",
    "ROOT",
    "Mosquitto",
    "ProductionBroker",
    "TcpProxy",
    "free_port",
    "production_broker",
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


ENTRYPOINT = ROOT / "deploy" / "mosquitto" / "entrypoint.sh"
ADMIN_PASSWORD = "prod-admin-secret"
# Service identities of the production broker (as docker-compose's broker-setup makes them): one shared
# identity per service, its processes picking their client ids in the reserved space (ingest-1..3, ...).
SERVICE_PASSWORDS = {
    "svc-ingest": "ingest-secret",
    "svc-alerts": "alerts-secret",
    "svc-ota": "ota-secret",
    "svc-simulator": "sim-secret",
}


def dynsec_plugin() -> str:
    plugin = next((p for p in DYNSEC_PLUGINS if Path(p).exists()), None)
    if plugin is None:
        raise FileNotFoundError(
            "mosquitto_dynamic_security.so not found: install the Debian package mosquitto"
        )
    return plugin


class ProductionBroker:
    """The broker as docker-compose runs it: deploy/mosquitto/entrypoint.sh (base configuration with its
    real autosave_interval, the secure overlay, dynamic security, the TLS listener on a project CA made
    for it), with the roles bootstrapped and the service identities of SERVICE_PASSWORDS created.

    `device(id)` provisions a device (bound to client id = its id) and returns its MQTT URL with
    credentials; `service_url(name)` the URL of a service identity; `stop(kill=...)`/`start()` restart
    it on the same ports and data folder; `close()` stops it and removes its folder."""

    def __init__(self, workdir: Path) -> None:
        from cloud.identity.pki import init_pki

        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.cert_dir = workdir / "certs"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (self.cert_dir / "ca.crt").exists():
            init_pki(self.cert_dir)
        self.port = free_port()
        self.tls_port = free_port()
        self.log_path = workdir / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._devices: dict[str, str] = {}
        self._env = {
            **os.environ,
            "MOSQUITTO_CONF_DIR": str(ROOT / "deploy" / "mosquitto"),
            "MOSQUITTO_DATA_DIR": str(self.data_dir),
            "MOSQUITTO_CERT_DIR": str(self.cert_dir),
            "MOSQUITTO_DYNSEC_PLUGIN": dynsec_plugin(),
            "MOSQUITTO_RUN_CONF": str(workdir / "run.conf"),
            "MQTT_PORT": str(self.port),
            "MQTTS_PORT": str(self.tls_port),
            "MQTT_ADMIN_PASSWORD": ADMIN_PASSWORD,
            # as root, mosquitto would drop to the `mosquitto` user, which cannot write our folder
            "MOSQUITTO_EXTRA_CONF": "user root" if os.geteuid() == 0 else "",
        }

    @property
    def url(self) -> str:
        """The anonymous URL (refused by this broker: no anonymous access)."""
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"mqtt://admin:{ADMIN_PASSWORD}@127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.cert_dir / "ca.crt"

    def run_conf(self) -> str:
        """The configuration the entrypoint generated (base + overlay), as mosquitto reads it."""
        return (self.workdir / "run.conf").read_text()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        if self.proc is not None:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        try:
            self.proc = subprocess.Popen(["sh", str(ENTRYPOINT)], env=self._env, stdout=log, stderr=log)
        finally:
            log.close()
        try:
            wait_port(self.port)
            wait_port(self.tls_port)
        except TimeoutError:
            self.stop(kill=True)
            raise RuntimeError(f"the production broker did not start; its log:\n{self.log_text()}") from None

    def bootstrap(self) -> None:
        """Roles (default deny) and the service identities; safe to repeat."""
        from cloud.identity import policy, provision
        from cloud.identity.dynsec import DynsecClient

        with DynsecClient(self.url, "admin", ADMIN_PASSWORD) as admin:
            provision.bootstrap(admin)
            commands = [
                c for name, pw in SERVICE_PASSWORDS.items() for c in policy.provision_service(name, name, pw)
            ]
            admin.run(commands, tolerate_exists=True)

    def service_url(self, name: str) -> str:
        """`mqtt://svc-...:secret@127.0.0.1:port` for svc-ingest, svc-alerts, svc-ota, svc-simulator."""
        return f"mqtt://{name}:{SERVICE_PASSWORDS[name]}@127.0.0.1:{self.port}"

    def devices(self, device_ids: list[str] | tuple[str, ...]) -> dict[str, str]:
        """Provision these devices (once each: a second call returns the same credentials) over one
        admin connection; each device's URL with its credentials, bound to client id = device id."""
        from cloud.identity import provision
        from cloud.identity.dynsec import DynsecClient

        new = [d for d in device_ids if d not in self._devices]
        if new:
            with DynsecClient(self.url, "admin", ADMIN_PASSWORD) as admin:
                for d in new:
                    self._devices[d] = provision.provision_device(admin, d, self.url).url_with_secret()
        return {d: self._devices[d] for d in device_ids}

    def device(self, device_id: str) -> str:
        return self.devices([device_id])[device_id]

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (mosquitto saves its database on the way out) or SIGKILL (it loses what it queued
        since its last autosave)."""
        if self.proc is not None:
            stop_process(self.proc, kill)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def production_broker(tmp_dir: Path) -> ProductionBroker:
    """A started production broker under `tmp_dir` (a folder of its own is made there), bootstrapped,
    with the service identities. Call `.close()` when done."""
    broker = ProductionBroker(Path(tempfile.mkdtemp(prefix="mf-prod-", dir=tmp_dir)))
    broker.start()
    try:
        broker.bootstrap()
    except BaseException:
        broker.close()
        raise
    return broker
