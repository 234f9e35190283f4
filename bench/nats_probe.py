"""Probe the NATS tier (issue 13, part 1): what the MQTT gateway of a three-node JetStream cluster does with
microfleet's traffic, measured on a private cluster on loopback (tests/support/nats.py).

    .venv/bin/python bench/nats_probe.py                    # every experiment, nats-server from PATH
    .venv/bin/python bench/nats_probe.py --server /path/to/nats-server --only a,d --count 2000

  a  the real edge agent (MQTT 5 through aiomqtt) against the gateway; the same agent with only its MQTT
     client built for 3.1.1; a plain paho 3.1.1 client: QoS 1 publish/subscribe, retained messages
  b  where a QoS 1 publish lands ($MQTT_msgs), and a durable pull consumer on it (nats-py): fetch in
     batches, acknowledge after a (simulated) commit, everything once; downlinks from NATS to a device
  c  retained messages: how the gateway keeps them ($MQTT_rmsgs), and who gets them after a reconnect
     and after a restart of the whole cluster
  d  SIGKILL the leader of $MQTT_msgs during N acknowledged publishes: PUBACKs, the longest stall, what a
     durable consumer gets (missing / duplicated), after the node is back
  e  publish rate of one QoS 1 MQTT connection through the stream leader's node and through another

Needs nats-py (pip install nats-py). Prints one line per finding and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.nats import NatsCluster, nats_server_binary

MSGS = "$MQTT_msgs"
RMSGS = "$MQTT_rmsgs"
UP_FILTER = "$MQTT.msgs.mf.v1.*.up.>"
MQTT_PUB = {"Nmqtt-Pub": "1"}  # the header the gateway puts on a QoS 1 publish it stores
RESULTS: dict[str, Any] = {}


def say(key: str, value: Any, note: str = "") -> None:
    RESULTS[key] = value
    print(f"  {key}: {value}{'  (' + note + ')' if note else ''}", flush=True)


# -- a paho MQTT 3.1.1 client that counts PUBACKs ------------------------------------------------------


class Mqtt311:
    """paho at MQTT 3.1.1 (what the NATS gateway speaks), clean_session False, QoS 1 PUBACKs timed."""

    def __init__(self, port: int, client_id: str, *, clean: bool = False, inflight: int = 20) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=clean
        )
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self.acked: dict[int, float] = {}  # seq -> monotonic time of its PUBACK
        self.received: list[tuple[str, bytes, int, bool]] = []  # topic, payload, qos, retain
        self.session_present: bool | None = None
        self.connack_rc: Any = None
        self._mid_seq: dict[int, int] = {}
        self._early: dict[int, float] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subacked = threading.Event()
        self.client.on_subscribe = lambda *a: self._subacked.set()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError(f"no CONNACK from 127.0.0.1:{port}: rc {self.connack_rc}")

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connack_rc = rc
        self.session_present = bool(flags.session_present)
        if not rc.is_failure:
            self._connected.set()

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        now = time.monotonic()
        with self._lock:  # never held across a paho call: paho holds its own lock around this callback
            seq = self._mid_seq.pop(mid, None)
            if seq is None:
                self._early[mid] = now  # acked before publish() returned its mid
            else:
                self.acked.setdefault(seq, now)

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        self.received.append((msg.topic, msg.payload, msg.qos, bool(msg.retain)))

    def publish(self, topic: str, payload: bytes, seq: int, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._lock:
            at = self._early.pop(info.mid, None)
            if at is None:
                self._mid_seq[info.mid] = seq
            else:
                self.acked.setdefault(seq, at)

    def subscribe(self, topic: str, timeout: float = 10.0) -> float:
        """Subscribe at QoS 1 and wait for the SUBACK: its latency in seconds (a QoS 1 subscription is a
        JetStream consumer the gateway creates)."""
        self._subacked.clear()
        t0 = time.monotonic()
        self.client.subscribe(topic, qos=1)
        if not self._subacked.wait(timeout):
            raise TimeoutError(f"no SUBACK for {topic} in {timeout} s")
        return time.monotonic() - t0

    def wait(self, cond: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(0.02)
        return bool(cond())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def mqtt311(port: int, client_id: str, **kw: Any) -> Iterator[Mqtt311]:
    c = Mqtt311(port, client_id, **kw)
    try:
        yield c
    finally:
        c.close()


# -- JetStream (nats-py) ----------------------------------------------------------------------------


async def durable(js: Any, name: str, filter_subject: str = UP_FILTER) -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    await js.add_consumer(
        MSGS,
        ConsumerConfig(
            durable_name=name,
            filter_subject=filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=30,
            max_ack_pending=10_000,
        ),
    )
    return await js.pull_subscribe_bind(name, stream=MSGS)


async def drain(psub: Any, got: list[bytes], idle_s: float = 3.0, batch: int = 100) -> None:
    """Fetch in batches, 'commit' (keep the payload), then acknowledge each: until idle for idle_s."""
    import nats.errors

    idle_since = time.monotonic()
    while time.monotonic() - idle_since < idle_s:
        try:
            msgs = await psub.fetch(batch, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        except Exception as exc:  # a leader change answers some fetches with an error: fetch again
            print(f"    fetch: {type(exc).__name__}: {exc}", flush=True)
            await asyncio.sleep(0.2)
            continue
        got.extend(m.data for m in msgs)  # the simulated commit
        for m in msgs:
            await m.ack()
        idle_since = time.monotonic()


async def stream_state(js: Any, name: str) -> dict[str, Any]:
    si = await js.stream_info(name)
    return {
        "subjects": si.config.subjects,
        "retention": str(si.config.retention),
        "replicas": si.config.num_replicas,
        "messages": si.state.messages,
        "leader": si.cluster.leader if si.cluster else None,
    }


# -- a: the agent ------------------------------------------------------------------------------------


async def agent_try(
    cluster: NatsCluster, workdir: Path, *, v311: bool, seconds: float = 6.0
) -> dict[str, Any]:
    """Run the real edge agent against node 0's gateway for `seconds` and report its link stats. With
    v311, only the link's client factory is replaced (MQTT 3.1.1, clean_session False, no properties)."""
    import aiomqtt

    from contract.messages import EndReason
    from edge import link as link_mod
    from edge.app import Agent
    from edge.checked import CheckedClient
    from edge.clock import SystemClock
    from edge.config import EdgeConfig
    from edge.sensor import DemoSensor

    original = link_mod.Link._new_client

    def new_client_311(self: Any, will: bytes) -> CheckedClient:
        cfg, addr = self._cfg, self._addr
        return CheckedClient(
            addr.host,
            addr.port,
            identifier=cfg.device_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self._status_topic, will, qos=1, retain=True),
            clean_session=cfg.session_expiry_s == 0,
            keepalive=cfg.keepalive_s,
            timeout=cfg.connect_timeout_s,
            max_inflight_messages=cfg.inflight,
        )

    device = "dev-v311" if v311 else "dev-v5"
    cfg = EdgeConfig(
        device_id=device,
        data_dir=workdir / device,
        mqtt_url=cluster.mqtt_url(0),
        ack_mode="broker",  # no microfleet cloud behind this gateway: rows leave on PUBACK
        reconnect_min_s=0.5,
        reconnect_max_s=1.0,
        connect_timeout_s=3.0,
    )
    if v311:
        link_mod.Link._new_client = new_client_311  # type: ignore[method-assign]
    clock = SystemClock()
    sensor = DemoSensor(seed=1)
    try:
        async with Agent(cfg) as agent:
            agent.start_session(3)
            for _ in range(25):  # 5 messages: start, 3 sample batches, end
                agent.record(sensor.read(clock.now(), agent.level or 3))
            agent.end_session(EndReason.USER)
            drained = True
            try:
                async with asyncio.timeout(seconds):
                    await agent.drained()
            except TimeoutError:
                drained = False
            st = agent.link.stats
            return {
                "drained": drained,
                "connects": st.connects,
                "disconnects": st.disconnects,
                "sent": st.sent,
                "not_taken": st.not_taken,
                "outbox_depth": agent.stats().outbox_depth,
            }
    finally:
        link_mod.Link._new_client = original  # type: ignore[method-assign]


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def exp_a(cluster: NatsCluster, js: Any, workdir: Path) -> None:
    print("a) the edge agent and MQTT 3.1.1 through the gateway", flush=True)
    # MQTT 5 at the protocol level: what does the gateway answer?
    v5 = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe-v5", protocol=mqtt.MQTTv5)
    answer: list[str] = []
    v5.on_connect = lambda c, u, f, rc, p=None: answer.append(f"CONNACK {rc}")
    v5.on_disconnect = lambda c, u, f, rc, p=None: answer.append(f"disconnect {rc}")
    v5.connect("127.0.0.1", cluster.mqtt_port(0))
    v5.loop_start()
    deadline = time.monotonic() + 5
    while not answer and time.monotonic() < deadline:  # noqa: ASYNC110 (paho thread)
        await asyncio.sleep(0.05)
    v5.loop_stop()
    say("a.paho_mqtt5_connect", answer[0] if answer else "no answer in 5 s")
    psub = await durable(js, "probe-a", "$MQTT.msgs.mf.v1.*.up.>")
    cap = Captured()
    logging.getLogger("edge").addHandler(cap)
    logging.getLogger("edge").setLevel(logging.INFO)
    say("a.agent_mqtt5", await agent_try(cluster, workdir, v311=False))
    say("a.agent_mqtt5_log", sorted({line[:160] for line in cap.lines})[:3])
    cap.lines.clear()
    say("a.agent_mqtt311_client_only", await agent_try(cluster, workdir, v311=True))
    got: list[bytes] = []
    await drain(psub, got, idle_s=1.5)
    say("a.agent_mqtt311_messages_in_jetstream", len(got), "uplinks of dev-v311 a durable consumer fetched")
    await js.delete_consumer(MSGS, "probe-a")
    # plain paho 3.1.1: QoS 1 both ways, retained
    with mqtt311(cluster.mqtt_port(2), "pa-dev") as dev, mqtt311(cluster.mqtt_port(0), "pa-svc") as svc:
        dev.subscribe("mf/v1/pa-dev/down/#")
        svc.publish("mf/v1/pa-dev/down/notice", b"n1", 1)
        svc.publish("mf/v1/pa-dev/down/protocol", b"p1", 2, retain=True)
        ok = dev.wait(lambda: len(dev.received) >= 2, 5)
        say("a.paho311_qos1_downlinks", [(t, q, r) for t, _, q, r in dev.received] if ok else dev.received)
        say("a.paho311_pubacks", len(svc.acked))
    with mqtt311(cluster.mqtt_port(1), "pa-late", clean=True) as late:
        late.subscribe("mf/v1/pa-dev/down/#")
        late.wait(lambda: bool(late.received), 5)
        say("a.paho311_retained_to_newcomer", [(t, p, q, r) for t, p, q, r in late.received])


async def exp_b(cluster: NatsCluster, nc: Any, js: Any) -> None:
    print("b) QoS 1 publishes in $MQTT_msgs and a durable pull consumer", flush=True)
    n = 1000
    with mqtt311(cluster.mqtt_port(1), "pb-early") as pub:
        for i in range(10):
            pub.publish("mf/v1/dev-early/up/telemetry", b"early %d" % i, i)
        pub.wait(lambda: len(pub.acked) == 10, 10)
        say("b.before_any_consumer_pubacked", len(pub.acked))
    psub = await durable(js, "ingest", "$MQTT.msgs.mf.v1.*.up.>")
    early: list[bytes] = []
    await drain(psub, early, idle_s=1.0)
    say("b.before_any_consumer_delivered", len(early), "interest retention: no consumer, no message")
    t0 = time.monotonic()
    with mqtt311(cluster.mqtt_port(1), "pb-dev") as pub:
        for i in range(n):
            pub.publish(f"mf/v1/dev-b{i % 10}/up/telemetry", json.dumps({"seq": i}).encode(), i)
        pub.wait(lambda: len(pub.acked) == n, 60)
        say("b.pubacked", len(pub.acked))
        say("b.publish_rate_msg_s", round(n / (time.monotonic() - t0)))
    st = await stream_state(js, MSGS)
    say("b.msgs_stream", st)
    one = (await psub.fetch(1, timeout=2))[0]
    say("b.stored_as", {"subject": one.subject, "headers": one.headers, "data": one.data[:40].decode()})
    await one.nak()
    # two "ingest processes" share the durable consumer
    psub2 = await js.pull_subscribe_bind("ingest", stream=MSGS)
    got1: list[bytes] = []
    got2: list[bytes] = []
    t0 = time.monotonic()
    await asyncio.gather(drain(psub, got1, idle_s=1.5), drain(psub2, got2, idle_s=1.5))
    seqs = [json.loads(p)["seq"] for p in got1 + got2]
    say("b.consumer_split", [len(got1), len(got2)])
    say("b.consumer_unique_of_n", f"{len(set(seqs))}/{n}, duplicates {len(seqs) - len(set(seqs))}")
    say("b.msgs_after_ack", (await stream_state(js, MSGS))["messages"])
    # downlinks from NATS to an MQTT device: offline (persisted session) and online
    with mqtt311(cluster.mqtt_port(2), "dev-d") as dev:
        say("b.qos1_subscribe_suback_s", round(dev.subscribe("mf/v1/dev-d/down/#"), 3))
    await nc.publish("mf.v1.dev-d.down.notice", b"core-offline")
    await js.publish("$MQTT.msgs.mf.v1.dev-d.down.committed", b"js-offline")
    await js.publish("$MQTT.msgs.mf.v1.dev-d.down.committed", b"js-hdr-offline", headers=MQTT_PUB)
    with mqtt311(cluster.mqtt_port(0), "svc-d") as svc:
        svc.publish("mf/v1/dev-d/down/gate", b"mqtt-offline", 1)
        svc.wait(lambda: len(svc.acked) == 1, 5)
    await nc.flush()
    with mqtt311(cluster.mqtt_port(2), "dev-d") as dev:
        dev.wait(lambda: len(dev.received) >= 3, 3)
        say("b.downlink_offline_session_present", dev.session_present)
        say("b.downlink_offline_got", [(t, p, q) for t, p, q, _ in dev.received])
        dev.received.clear()
        await nc.publish("mf.v1.dev-d.down.notice", b"core-online")
        await js.publish("$MQTT.msgs.mf.v1.dev-d.down.committed", b"js-online")
        await js.publish("$MQTT.msgs.mf.v1.dev-d.down.committed", b"js-hdr-online", headers=MQTT_PUB)
        await nc.flush()
        dev.wait(lambda: len(dev.received) >= 3, 3)
        say("b.downlink_online_got", [(t, p, q) for t, p, q, _ in dev.received])
    ack = await js.publish("$MQTT.msgs.mf.v1.nobody.down.committed", b"to no session")
    try:
        await js.get_msg(MSGS, ack.seq)
        kept = True
    except Exception:
        kept = False
    say("b.downlink_to_no_session", {"puback_seq": ack.seq, "kept": kept})


async def exp_c(cluster: NatsCluster, js: Any) -> None:
    print("c) retained messages", flush=True)
    topic = "mf/v1/dev-c/down/protocol"
    with mqtt311(cluster.mqtt_port(0), "svc-c") as svc:
        svc.publish(topic, b"protocol v1", 1, retain=True)
        svc.publish(topic, b"protocol v2", 2, retain=True)
        svc.publish("mf/v1/dev-c/down/firmware", b"fw 1.2.0", 3, retain=True)
        svc.wait(lambda: len(svc.acked) == 3, 5)
    st = await stream_state(js, RMSGS)
    say("c.rmsgs_stream", st)
    last = await js.get_last_msg(RMSGS, st["subjects"][0].replace(">", "mf.v1.dev-c.down.protocol"))
    say(
        "c.rmsgs_stored_as",
        {"subject": last.subject, "headers": last.headers, "data": (last.data or b"")[:80]},
    )
    # a device with a persisted session that re-subscribes on connect (as the agent does)
    with mqtt311(cluster.mqtt_port(1), "dev-c") as dev:
        dev.subscribe("mf/v1/dev-c/down/#")
        dev.wait(lambda: len(dev.received) >= 2, 5)
        say("c.first_subscribe_got", [(t, p, r) for t, p, _, r in dev.received])
    with mqtt311(cluster.mqtt_port(2), "dev-c") as dev:
        dev.subscribe("mf/v1/dev-c/down/#")
        dev.wait(lambda: len(dev.received) >= 2, 5)
        say("c.reconnect_resubscribe_got", [(t, p, r) for t, p, _, r in dev.received], "another node")
    with mqtt311(cluster.mqtt_port(0), "dev-c") as dev:
        dev.wait(lambda: len(dev.received) >= 2, 2)
        say("c.reconnect_no_subscribe_got", [(t, p, r) for t, p, _, r in dev.received])
    for i in range(len(cluster.nodes)):  # the whole cluster stops (SIGTERM) and comes back
        cluster.kill(i, hard=False)
    for i in range(len(cluster.nodes)):
        cluster._spawn(i)
    cluster.wait_ready()
    cluster.wait_stream_leader(RMSGS)
    with mqtt311(cluster.mqtt_port(1), "dev-c2", clean=True) as dev:
        dev.subscribe("mf/v1/dev-c/down/#")
        dev.wait(lambda: len(dev.received) >= 2, 10)
        say("c.after_cluster_restart_newcomer_got", [(t, p, r) for t, p, _, r in dev.received])
    with mqtt311(cluster.mqtt_port(0), "svc-c") as svc:
        svc.publish(topic, b"", 4, retain=True)  # clear
        svc.wait(lambda: len(svc.acked) == 1, 5)
    with mqtt311(cluster.mqtt_port(2), "dev-c3", clean=True) as dev:
        dev.subscribe(topic)
        dev.wait(lambda: bool(dev.received), 2)
        say("c.after_clear_got", [(t, p, r) for t, p, _, r in dev.received])


async def exp_d(cluster: NatsCluster, js: Any, n: int, hard: bool) -> None:
    print(
        f"d) {'SIGKILL' if hard else 'SIGTERM'} the leader of $MQTT_msgs during {n} acknowledged publishes",
        flush=True,
    )
    psub = await durable(js, "ingest-d", "$MQTT.msgs.mf.v1.dev-kill.up.>")
    leader = cluster.wait_stream_leader(MSGS)
    via = next(x.index for x in cluster.nodes if x.name != leader)
    say("d.leader_killed", leader)
    say("d.publisher_via", cluster.nodes[via].name)
    got: list[bytes] = []
    stop = asyncio.Event()

    async def consume() -> None:
        while not stop.is_set():
            await drain(psub, got, idle_s=0.5)

    consumer = asyncio.create_task(consume())
    killed_at = 0.0
    t0 = time.monotonic()
    with mqtt311(cluster.mqtt_port(via), "dev-kill") as pub:
        for i in range(n):
            pub.publish("mf/v1/dev-kill/up/telemetry", b"%d" % i, i)
            if i == n // 4:
                while len(pub.acked) < n // 4 and time.monotonic() - t0 < 60:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                killed_at = time.monotonic()
                await asyncio.to_thread(cluster.kill, cluster.index(leader), hard=hard)
        deadline = time.monotonic() + 150
        while len(pub.acked) < n and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        acked = dict(pub.acked)
    times = sorted(acked.values())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    after = [t for t in times if t > killed_at]
    say("d.pubacked", f"{len(acked)}/{n}")
    say("d.longest_puback_gap_s", round(max(gaps), 2) if gaps else None)
    say("d.first_puback_after_kill_s", round(after[0] - killed_at, 2) if after else None)
    say("d.new_leader", cluster.stream_leader(MSGS))
    await asyncio.sleep(2)
    delivered_before_restart = {int(p) for p in got}
    await asyncio.to_thread(cluster.start_node, cluster.index(leader))
    await asyncio.to_thread(cluster.wait_ready)
    await asyncio.sleep(3)
    stop.set()
    await consumer
    seqs = [int(p) for p in got]
    missing = sorted(set(acked) - set(seqs))
    say("d.consumer_got_unique", len(set(seqs)))
    say("d.consumer_duplicates", len(seqs) - len(set(seqs)))
    say("d.acked_but_missing", f"{len(missing)} {missing[:10]}")
    say("d.missing_before_restart", len(set(acked) - delivered_before_restart))
    say("d.delivered_not_acked", len(set(seqs) - set(acked)))
    say("d.total_s", round(time.monotonic() - t0, 1))


async def exp_e(cluster: NatsCluster, js: Any, n: int) -> None:
    print("e) publish rate of one QoS 1 connection (inflight 20)", flush=True)
    psub = await durable(js, "ingest-e", "$MQTT.msgs.mf.v1.dev-rate.up.>")
    leader = cluster.wait_stream_leader(MSGS)
    for label, node in (("leader", cluster.index(leader)), ("non_leader", (cluster.index(leader) + 1) % 3)):
        with mqtt311(cluster.mqtt_port(node), f"dev-rate-{label}") as pub:
            t0 = time.monotonic()
            for i in range(n):
                pub.publish("mf/v1/dev-rate/up/telemetry", b"%d" % i, i)
            pub.wait(lambda: len(pub.acked) == n, 120)
            say(f"e.rate_via_{label}_msg_s", round(len(pub.acked) / (time.monotonic() - t0)))
        got: list[bytes] = []
        t0 = time.monotonic()
        await drain(psub, got, idle_s=1.0)
        say(
            f"e.consumer_fetch_ack_rate_{label}_msg_s",
            round(len(got) / max(0.001, time.monotonic() - t0 - 1.0)),
        )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default=nats_server_binary(), help="the nats-server binary")
    ap.add_argument("--only", default="a,b,c,d,e", help="experiments to run (a,b,c,d,e)")
    ap.add_argument("--count", type=int, default=2000, help="publishes in experiment d")
    ap.add_argument("--soft", action="store_true", help="d: SIGTERM the leader instead of SIGKILL")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.server is None:
        sys.exit("nats-server not found: apt-get install -y nats-server, or pass --server")
    import nats

    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="mf-nats-") as tmp:
        cluster = NatsCluster(Path(tmp), 3, binary=args.server, mqtt_conf="stream_replicas: 3")
        print(f"nats-server {cluster.version}: three nodes on loopback, {tmp}", flush=True)
        RESULTS["nats_server"] = cluster.version
        try:
            cluster.start()
            with mqtt311(cluster.mqtt_port(0), "probe-init") as init:  # the gateway makes its streams
                init.publish("mf/v1/probe/up/init", b"", 0)
                init.wait(lambda: bool(init.acked), 10)
            nc = await nats.connect(cluster.nats_urls(), max_reconnect_attempts=-1)
            js = nc.jetstream()
            say("streams", {s: (await stream_state(js, s))["replicas"] for s in (MSGS, RMSGS, "$MQTT_sess")})
            if "a" in only:
                await exp_a(cluster, js, Path(tmp))
            if "b" in only:
                await exp_b(cluster, nc, js)
            if "e" in only:
                await exp_e(cluster, js, 1000)
            if "d" in only:
                await exp_d(cluster, js, args.count, hard=not args.soft)
            if "c" in only:  # last: it restarts the whole cluster
                await exp_c(cluster, js)
            await nc.close()
        finally:
            cluster.close()
    print(json.dumps(RESULTS, default=str, indent=1))
    if args.json:
        args.json.write_text(json.dumps(RESULTS, default=str, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
