"""Faults on purpose, with real mechanisms (no mocks):

- `FlakyPath`: an asyncio TCP proxy in front of the broker for the devices under fault (their MQTT URL
  points at it). `cut()` drops every open connection (a network drop), `flap(n, every_s)` drops it n
  times, `block()` ... `heal()` keeps the device offline (for days of simulated time: its outbox fills,
  then drains on heal);
- `reconnect_storm(broker, ...)`: stop the broker and start it again: every device reconnects at once;
- clock skew: `FleetConfig.clock_skew_s` (the agent's clock runs ahead or behind by an offset);
- `corrupt(payload, rng)`: a payload the cloud must quarantine (truncated, bit-flipped, not JSON,
  wrong schema); `publish_raw(url, messages)`: raw bytes on the wire, for corrupt payloads and for
  duplicated and reordered deliveries (`duplicate_and_reorder`);
- `power_loss_mid_ota(agent, job_id, stage=...)`: cut the device's power (`Agent.power_off`: no goodbye,
  the broker sends the last will) when a firmware job reaches a stage;
- `drop_link_at(agent, clock, times)`: a connectivity-challenged user's bad Wi-Fi: the agent's connection
  drops at these virtual times (`flap_schedule`: a Poisson process of `Persona.flaps_per_day`); the
  fleet runs it for every device of such a persona, and the agent reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterable, Sequence
from typing import Protocol

import aiomqtt

from contract.mqtturl import parse_mqtt_url
from edge.app import Agent
from simulators.device import SimCounters
from simulators.simclock import SimClock


class FlakyPath:
    """A TCP proxy 127.0.0.1:<port> -> broker. Owns its server and its piping tasks (`async with`)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.blocked = False
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FlakyPath:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._conns |= {writer, up_w}
        for src, dst in ((reader, up_w), (up_r, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(dst)
            dst.close()

    def cut(self) -> None:
        """Drop every open connection now (the device sees a network drop and reconnects)."""
        self.cuts += 1
        for w in list(self._conns):
            w.transport.abort()
        self._conns.clear()

    def block(self) -> None:
        """Offline: cut and refuse new connections until `heal()`."""
        self.blocked = True
        self.cut()

    def heal(self) -> None:
        self.blocked = False

    async def flap(self, times: int, every_s: float) -> None:
        for _ in range(times):
            self.cut()
            await asyncio.sleep(every_s)


class Restartable(Protocol):
    def stop(self, kill: bool = False) -> None: ...
    def start(self) -> None: ...


async def reconnect_storm(broker: Restartable, down_s: float = 0.5, *, kill: bool = False) -> None:
    """Stop the broker (killed: no clean disconnects), wait, start it again: every device reconnects at once."""
    await asyncio.to_thread(broker.stop, kill)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(broker.start)


CORRUPTIONS = ("truncate", "flip", "not_json", "wrong_schema")


def corrupt(payload: bytes, rng: random.Random, how: str | None = None) -> bytes:
    """A corrupted copy of a valid uplink payload that the cloud must quarantine (never store)."""
    how = how or rng.choice(CORRUPTIONS)
    if how == "truncate":
        return payload[: max(1, len(payload) // 2)]
    if how == "flip":
        b = bytearray(payload)
        b[0] ^= 0xFF  # the first byte of a JSON object: '{' becomes invalid UTF-8
        return bytes(b)
    if how == "not_json":
        return b"\x00\xffnot json at all"
    if how == "wrong_schema":
        return b'{"kind":"samples","schema_version":1,"device_id":"x","seq":-1}'
    raise ValueError(f"unknown corruption {how!r}: choose from {CORRUPTIONS}")


def duplicate_and_reorder(
    messages: Sequence[tuple[str, bytes]], rng: random.Random, duplicates: float = 0.5
) -> list[tuple[str, bytes]]:
    """Every message once, a share of them twice, all in a shuffled order (what a flaky path delivers)."""
    out = list(messages) + [m for m in messages if rng.random() < duplicates]
    rng.shuffle(out)
    return out


async def publish_raw(url: str, messages: Iterable[tuple[str, bytes]], *, client_id: str = "") -> int:
    """Publish raw bytes at QoS 1 as they are (no encoding, no checks). Returns how many were acked."""
    addr = parse_mqtt_url(url)
    n = 0
    async with aiomqtt.Client(
        addr.host,
        addr.port,
        username=addr.username,
        password=addr.password,
        identifier=client_id or f"faults-{random.getrandbits(32):08x}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)
            n += 1
    return n


async def power_loss_mid_ota(
    agent: Agent, job_id: str, *, stage: str = "downloading", timeout_s: float = 30.0
) -> str:
    """Cut `agent`'s power once its firmware job `job_id` reaches `stage` (downloading, verifying,
    installing, ...), as recorded in its data folder. Returns the stage it died in. Power it on again with a
    new Agent on the same config: the OTA client resumes the download or rolls back the install, and
    must end on a good firmware that it reports truthfully."""
    ota = agent.ota
    async with asyncio.timeout(timeout_s):
        while ota.slots.stage(job_id) != stage:  # noqa: ASYNC110 - the client writes it to disk
            await asyncio.sleep(0.005)
    died_in = ota.slots.stage(job_id) or ""
    await agent.power_off()
    return died_in


RECONNECT_WAIT_S = 5.0  # real seconds a drop holds virtual time for the agent to reconnect


def flap_schedule(rng: random.Random, days: float, per_day: float) -> list[float]:
    """Virtual times (s) of link drops for a connectivity-challenged device: a Poisson process."""
    out: list[float] = []
    t = 0.0
    end = days * 86_400
    while per_day > 0:
        t += rng.expovariate(per_day / 86_400)
        if t >= end:
            break
        out.append(t)
    return out


async def drop_link_at(
    agent: Agent, clock: SimClock, times_s: Sequence[float], counters: SimCounters
) -> None:
    """Drop the agent's connection at each virtual time (s from the clock's day 0), as a lost Wi-Fi would
    (no DISCONNECT: the broker sends the last will). A user task of the clock, so virtual time never
    skips a drop; the agent reconnects with its own backoff and forwards what it stored meanwhile."""
    clock.enter()
    try:
        for t in times_s:
            await clock.sleep(t - clock.monotonic())
            if not agent.link.connected.is_set():
                continue  # the network is down anyway (an outage of the scenario): nothing to drop
            agent.link.abort()
            counters.link_drops += 1
            # hold virtual time until the agent has noticed (a few ms of real time) and reconnected: in
            # compressed time its backoff and connect would otherwise take virtual hours, and the next
            # drops would fall on a link that is still down (how many did depended on the machine's speed)
            async with asyncio.timeout(10):
                while agent.link.connected.is_set():  # noqa: ASYNC110 - the link's own event, set/cleared by it
                    await asyncio.sleep(0.002)
            with contextlib.suppress(TimeoutError):  # not back within seconds: the network is down
                async with asyncio.timeout(RECONNECT_WAIT_S):
                    await agent.link.connected.wait()
    finally:
        clock.exit()
