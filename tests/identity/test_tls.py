"""The broker's TLS listener with the project CA: trusted clients connect, others cannot."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud.identity import provision
from cloud.identity.dynsec import DynsecClient
from cloud.identity.pki import init_pki
from tests.support.services import secure_broker


def _connect_tls(port: int, cafile: Path, username: str, password: str, client_id: str | None = None) -> bool:
    """Connects with client id = username unless told (a device's identity is bound to its own id)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or username, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.tls_set(ca_certs=str(cafile))
    done = threading.Event()
    ok: list[bool] = []
    client.on_connect = lambda _c, _u, _f, rc, _p: (ok.append(not rc.is_failure), done.set())
    try:
        client.connect("127.0.0.1", port)
    except (ssl.SSLError, OSError):
        return False
    client.loop_start()
    try:
        done.wait(5)
        return bool(ok and ok[0])
    finally:
        client.disconnect()
        client.loop_stop()


def test_tls_listener_with_project_ca(tmp_path: Path) -> None:
    paths = init_pki(tmp_path / "pki")
    assert oct(paths["server.key"].stat().st_mode & 0o777) == "0o600"
    with pytest.raises(FileExistsError):
        init_pki(tmp_path / "pki")
    other = init_pki(tmp_path / "other")

    broker = secure_broker("admin-pw", tls_dir=tmp_path / "pki")
    broker.start()
    try:
        with DynsecClient(broker.url, "admin", "admin-pw") as admin:
            provision.bootstrap(admin)
            creds = provision.provision_device(admin, "dev-tls", broker.url)
        port = broker.tls_port  # type: ignore[attr-defined]
        assert _connect_tls(port, paths["ca.crt"], creds.username, creds.password)
        # a client that trusts another CA refuses the broker's certificate
        assert not _connect_tls(port, other["ca.crt"], creds.username, creds.password)
        # the right CA with a wrong secret is still refused by the broker
        assert not _connect_tls(port, paths["ca.crt"], creds.username, "wrong")
        # the right CA and secret with another client id: refused (bound to its own id)
        assert not _connect_tls(port, paths["ca.crt"], creds.username, creds.password, "ingest-1")
    finally:
        broker.close()
