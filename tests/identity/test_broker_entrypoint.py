"""The compose broker's entrypoint, run for real on this machine's mosquitto: secure by default, with
service identities created by the CLI from a deployment's secrets, and the TLS listener on the project CA."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cloud.identity.pki import init_pki
from tests.identity.test_tls import _connect_tls
from tests.support.services import DYNSEC_PLUGINS, ROOT, free_port, wait_port

ENTRYPOINT = ROOT / "deploy" / "mosquitto" / "entrypoint.sh"


def entrypoint_env(
    data: Path, certs: Path, plugin: str, run_conf: Path, port: int, tls_port: int, extra_conf: str
) -> dict[str, str]:
    """The environment compose gives deploy/mosquitto/entrypoint.sh, on this machine's folders and ports."""
    return {
        **os.environ,
        "MOSQUITTO_CONF_DIR": str(ROOT / "deploy" / "mosquitto"),
        "MOSQUITTO_DATA_DIR": str(data),
        "MOSQUITTO_CERT_DIR": str(certs),
        "MOSQUITTO_DYNSEC_PLUGIN": plugin,
        "MOSQUITTO_RUN_CONF": str(run_conf),
        "MQTT_PORT": str(port),
        "MQTTS_PORT": str(tls_port),
        "MQTT_ADMIN_PASSWORD": "compose-admin",
        "MOSQUITTO_EXTRA_CONF": extra_conf,
    }


def test_entrypoint_secure_broker_with_service_identities(tmp_path: Path) -> None:
    plugin = next((p for p in DYNSEC_PLUGINS if Path(p).exists()), None)
    if plugin is None:
        pytest.skip("mosquitto's dynamic-security plugin is not installed")
    certs = tmp_path / "certs"
    init_pki(certs)
    data = tmp_path / "data"
    data.mkdir()
    port, tls_port = free_port(), free_port()
    env = entrypoint_env(
        data, certs, plugin, tmp_path / "run.conf", port, tls_port, "user root" if os.geteuid() == 0 else ""
    )
    log = open(tmp_path / "broker.log", "wb")  # noqa: SIM115 - closed below
    broker = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stdout=log, stderr=log)
    try:
        wait_port(port)
        wait_port(tls_port)
        assert (data / "dynamic-security.json").exists()
        cli_env = {
            **os.environ,
            "MICROFLEET_BROKER_ADMIN_URL": f"mqtt://admin:compose-admin@127.0.0.1:{port}",
            "MICROFLEET_MQTT_URL": f"mqtt://127.0.0.1:{port}",
            "INGEST_MQTT_PASSWORD": "ingest-secret",
        }

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "cli.main", *args],
                env=cli_env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        assert cli("broker", "bootstrap").returncode == 0
        made = cli(
            "broker",
            "service",
            "svc-ingest-1",
            "--role",
            "svc-ingest",
            "--password-env",
            "INGEST_MQTT_PASSWORD",
        )
        assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout)["username"] == "svc-ingest-1"
        again = cli(
            "broker",
            "service",
            "svc-ingest-1",
            "--role",
            "svc-ingest",
            "--password-env",
            "INGEST_MQTT_PASSWORD",
        )
        assert again.returncode == 0 and "left as it is" in again.stderr
        # a device may not be named like a service's client id, a service may not be bound outside them
        reserved = cli("devices", "provision", "ingest-7")
        assert reserved.returncode == 2 and "reserved" in reserved.stderr
        assert (
            cli("broker", "service", "svc-x", "--role", "svc-ingest", "--client-id", "dev-1").returncode == 2
        )
        bound = cli("broker", "service", "svc-ingest-2", "--role", "svc-ingest", "--client-id", "ingest-2")
        assert bound.returncode == 0, bound.stderr
        # the service connects over TLS with the project CA and its chosen secret; anonymous does not
        assert _connect_tls(tls_port, certs / "ca.crt", "svc-ingest-1", "ingest-secret")
        assert not _connect_tls(tls_port, certs / "ca.crt", "svc-ingest-1", "wrong")
    finally:
        broker.terminate()
        broker.wait(10)
        log.close()


def _broker_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("mosquitto")
    except KeyError:
        return None


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop happens only when started as root")
def test_entrypoint_as_root_gives_the_broker_user_its_files(tmp_path: Path) -> None:
    """As in the container: started as root, mosquitto drops to the `mosquitto` user before it loads the TLS
    key and saves the dynamic-security file as that user. `pki init` leaves server.key 0600 for root (and
    the mount is read-only), and the first dynamic-security file is made by root: the entrypoint must hand
    both to the broker user, or the TLS listener does not start and the broker cannot save its identities."""
    user = _broker_user()
    plugin = next((p for p in DYNSEC_PLUGINS if Path(p).exists()), None)
    if user is None or plugin is None:
        pytest.skip("mosquitto (its user and dynamic-security plugin) is not installed")
    certs = tmp_path / "certs"  # root's, 0700 parents: as unreadable to the broker user as a root-only mount
    init_pki(certs)
    # what the broker writes must be reachable by its user: a folder outside pytest's root-only tmp
    top = Path(tempfile.mkdtemp(prefix="mf-entrypoint-"))
    try:
        top.chmod(0o755)
        data, run = top / "data", top / "run"
        data.mkdir()
        run.mkdir()
        port, tls_port = free_port(), free_port()
        env = entrypoint_env(data, certs, plugin, run / "mosquitto.conf", port, tls_port, "")
        env.pop("MOSQUITTO_USER", None)
        log_path = tmp_path / "broker.log"
        with open(log_path, "wb") as log:
            broker = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stdout=log, stderr=log)
        try:
            try:
                wait_port(port)
                wait_port(tls_port)  # the listener is up only when the key could be read
            except TimeoutError:
                pytest.fail(f"the broker did not start; its log:\n{log_path.read_text()}")
            # the broker (the entrypoint exec'ed it) runs as the broker user, not root
            status = Path(f"/proc/{broker.pid}/status").read_text()
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert int(uid_line.split()[1]) == user.pw_uid, uid_line
            key = run / "mosquitto-certs" / "server.key"
            assert key.stat().st_uid == user.pw_uid and key.stat().st_mode & 0o777 == 0o600
            assert _connect_tls(tls_port, certs / "ca.crt", "admin", "compose-admin")
            # the dynamic-security file is the broker user's, and the broker saves a change into it
            dynsec = data / "dynamic-security.json"
            assert dynsec.stat().st_uid == user.pw_uid
            done = subprocess.run(
                [sys.executable, "-m", "cli.main", "broker", "bootstrap"],
                env={
                    **os.environ,
                    "MICROFLEET_BROKER_ADMIN_URL": f"mqtt://admin:compose-admin@127.0.0.1:{port}",
                },
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            saved = json.loads(dynsec.read_text())
            assert saved.get("roles"), "the bootstrap's roles were not saved"
            assert dynsec.stat().st_uid == user.pw_uid
            assert "Error saving" not in log_path.read_text()
        finally:
            broker.terminate()
            broker.wait(10)
    finally:
        shutil.rmtree(top, ignore_errors=True)
