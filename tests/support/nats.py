"""A real three-node NATS cluster on loopback for tests and benchmarks: JetStream (each node its own store
folder), the MQTT gateway on every node, cluster routes between them, on free ports. Nothing here is a
mock, and the machine's own NATS (127.0.0.1:4222) is never touched.

    with NatsCluster.started(tmp_path) as cluster:
        cluster.mqtt_port(0)              # the MQTT gateway of node 0
        cluster.stream_leader("$MQTT_msgs")   # "n2": the node that leads a stream's RAFT group
        cluster.kill(2); cluster.start_node(2)  # SIGKILL one node, start it again (same ports, same store)

The server is `nats-server` on PATH (Debian's package installs /usr/sbin/nats-server), or the binary named
by MICROFLEET_NATS_SERVER. `nats_server_binary()` is None when neither exists: tests skip on that.
Leaders are read from each node's monitoring endpoint (/jsz), so no NATS client library is needed here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.localbroker import ROOT, free_port, stop_process, wait_port

__all__ = ["NatsCluster", "NatsNode", "nats_server_binary", "nats_server_version", "nats_setup"]

ENV_BINARY = "MICROFLEET_NATS_SERVER"
CLUSTER_NAME = "mf"
START_TIMEOUT_S = 30.0


def nats_server_binary() -> str | None:
    """The nats-server to run: $MICROFLEET_NATS_SERVER, else `nats-server` on PATH or in /usr/sbin."""
    named = os.environ.get(ENV_BINARY)
    if named:
        return named if Path(named).exists() else None
    return shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/local/sbin")


def nats_server_version(binary: str) -> str:
    """'2.9.10' for `nats-server: v2.9.10`."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip().rsplit("v", 1)[-1]


@dataclass
class NatsNode:
    name: str
    index: int
    client_port: int = field(default_factory=free_port)
    route_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor(self, path: str, timeout: float = 2.0) -> dict[str, Any]:
        """GET a monitoring endpoint (e.g. "/jsz?accounts=true&streams=true") as JSON."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data


class NatsCluster:
    """`size` nodes n0..n{size-1}, each with JetStream and the MQTT gateway. `extra_conf` is appended to
    every node's configuration (e.g. an `authorization { ... }` block); `mqtt_conf` and `jetstream_conf`
    go inside the `mqtt { }` and `jetstream { }` blocks. The gateway's streams are R3 by default: left
    to itself, nats-server 2.9.10 and 2.15.1 made them R2 when the first MQTT client came soon after
    start."""

    def __init__(
        self,
        workdir: Path,
        size: int = 3,
        *,
        binary: str | None = None,
        extra_conf: str = "",
        mqtt_conf: str = "stream_replicas: 3",
        jetstream_conf: str = "",
    ) -> None:
        found = binary or nats_server_binary()
        if found is None:
            raise FileNotFoundError(
                "nats-server not found: install Debian's package (apt-get install -y nats-server) "
                f"or name a binary in ${ENV_BINARY}"
            )
        self.binary = found
        self.version = nats_server_version(found)
        self.workdir = workdir
        self.extra_conf = extra_conf
        self.mqtt_conf = mqtt_conf
        self.jetstream_conf = jetstream_conf
        self.nodes = [NatsNode(name=f"n{i}", index=i) for i in range(size)]

    @classmethod
    @contextlib.contextmanager
    def started(cls, workdir: Path, size: int = 3, **kwargs: Any) -> Iterator[NatsCluster]:
        cluster = cls(workdir, size, **kwargs)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.close()

    # -- configuration -----------------------------------------------------------------------------

    def _conf(self, node: NatsNode) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{n.route_port}" for n in self.nodes if n is not node)
        store = self.workdir / node.name / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        return f"""
server_name: {node.name}
listen: 127.0.0.1:{node.client_port}
http: 127.0.0.1:{node.http_port}
jetstream {{
  store_dir: "{store}"
  max_memory_store: 256MB
  max_file_store: 2GB
  {self.jetstream_conf}
}}
cluster {{
  name: {CLUSTER_NAME}
  listen: 127.0.0.1:{node.route_port}
  routes: [{routes}]
}}
mqtt {{
  listen: 127.0.0.1:{node.mqtt_port}
  {self.mqtt_conf}
}}
{self.extra_conf}
"""

    def log_path(self, i: int) -> Path:
        return self.workdir / self.nodes[i].name / "server.log"

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        for i in range(len(self.nodes)):
            self._spawn(i)
        for node in self.nodes:
            wait_port(node.client_port, START_TIMEOUT_S)
        self.wait_ready()

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        conf = self.workdir / node.name / "nats.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(self._conf(node))
        log = self.log_path(i)
        node.proc = subprocess.Popen(
            [self.binary, "-c", str(conf), "-l", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start_node(self, i: int, timeout: float = START_TIMEOUT_S) -> None:
        """(Re)start node i on its ports and store; wait until it serves clients and MQTT."""
        if self.nodes[i].running:
            return
        self._spawn(i)
        wait_port(self.nodes[i].client_port, timeout)
        wait_port(self.nodes[i].mqtt_port, timeout)

    def kill(self, i: int, *, hard: bool = True) -> None:
        """SIGKILL (a crash: nothing flushed) or SIGTERM (a clean stop) node i, and wait for it."""
        proc = self.nodes[i].proc
        if proc is not None and proc.poll() is None:
            stop_process(proc, kill=hard, timeout_s=15.0)
        self.nodes[i].proc = None

    def close(self) -> None:
        for i in range(len(self.nodes)):
            self.kill(i, hard=False)

    # -- what the cluster knows --------------------------------------------------------------------

    def live(self) -> list[NatsNode]:
        return [n for n in self.nodes if n.running]

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's name, as a live node reports it (None while there is none)."""
        for node in self.live():
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                leader = node.monitor("/jsz").get("meta_cluster", {}).get("leader")
                if leader:
                    return str(leader)
        return None

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until every live node has JetStream, a meta leader is elected and every MQTT port listens."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.meta_leader() is not None and all(self._healthy(n) for n in self.live()):
                for node in self.live():
                    wait_port(node.mqtt_port, max(0.1, deadline - time.monotonic()))
                return
            time.sleep(0.1)
        raise TimeoutError(
            f"the NATS cluster has no JetStream meta leader after {timeout}s: see {self.workdir}"
        )

    @staticmethod
    def _healthy(node: NatsNode) -> bool:
        try:
            return node.monitor("/healthz").get("status") == "ok"
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def streams(self, account: str = "$G") -> dict[str, dict[str, Any]]:
        """Each stream of an account as the live nodes report it: name -> {"leader", "replicas", "messages"}
        (the leader's own view wins for "messages")."""
        found: dict[str, dict[str, Any]] = {}
        for node in self.live():
            try:
                jsz = node.monitor("/jsz?accounts=true&streams=true")
            except (OSError, urllib.error.URLError, ValueError):
                continue
            for acc in jsz.get("account_details") or []:
                if acc.get("name") != account and acc.get("id") != account:
                    continue
                for st in acc.get("stream_detail") or []:
                    cl = st.get("cluster") or {}
                    entry = found.setdefault(st["name"], {"leader": None, "replicas": [], "messages": None})
                    if cl.get("leader"):
                        entry["leader"] = cl["leader"]
                        entry["replicas"] = [r.get("name") for r in cl.get("replicas") or []]
                    if cl.get("leader") == node.name or entry["messages"] is None:
                        entry["messages"] = (st.get("state") or {}).get("messages")
        return found

    def stream_leader(self, stream: str, account: str = "$G") -> str | None:
        """The name of the node leading `stream` (None if no live node reports a leader)."""
        info = self.streams(account).get(stream)
        return None if info is None else info["leader"]

    def wait_stream_leader(
        self, stream: str, *, account: str = "$G", not_on: str | None = None, timeout: float = 60.0
    ) -> str:
        """Wait for `stream` to have a leader (other than `not_on`, e.g. the node just killed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.stream_leader(stream, account)
            if leader is not None and leader != not_on and self.nodes[self.index(leader)].running:
                return leader
            time.sleep(0.1)
        raise TimeoutError(f"stream {stream} has no leader (other than {not_on}) after {timeout}s")

    def index(self, name: str) -> int:
        return next(n.index for n in self.nodes if n.name == name)

    # -- addresses ---------------------------------------------------------------------------------

    def nats_url(self, i: int) -> str:
        return f"nats://127.0.0.1:{self.nodes[i].client_port}"

    def nats_urls(self) -> list[str]:
        return [self.nats_url(i) for i in range(len(self.nodes))]

    def mqtt_port(self, i: int) -> int:
        return self.nodes[i].mqtt_port

    def mqtt_url(self, i: int) -> str:
        return f"mqtt://127.0.0.1:{self.nodes[i].mqtt_port}"


def nats_setup(
    cluster: NatsCluster, *extra: str, gateway: int = 0, env: Mapping[str, str] | None = None
) -> str:
    """`microfleet nats setup` on the cluster as a deployment runs it, in its own process (`extra` are more
    options, `env` more environment): its stdout, after asserting it exited 0."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "nats",
            "setup",
            "--url",
            ",".join(cluster.nats_urls()),
            "--mqtt-url",
            cluster.mqtt_url(gateway),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout
