"""Which broker tier `microfleet loadtest` ran on, and (on the NATS tier) what JetStream holds after it.

The devices speak MQTT either way: to one mosquitto (MQTT 5 by default) or to the MQTT gateways of a
NATS cluster (MQTT 3.1.1, several comma-separated URLs; docs/decisions/nats-tier.md). Given the cluster's
`MICROFLEET_NATS_URL`, the report reads after the run: the server's version, `$MQTT_msgs` (replicas,
leader, messages kept) and the services' durables on it (`microfleet nats setup`'s: ingest, alerts,
alerts-feed; pending: not yet delivered to its service; unacked: delivered and not acknowledged;
redelivered). They are asked for by name: with 300 devices, a listing of the stream's consumers (one per
MQTT session's subscription) came back without `ingest` on 2.9.10. The gateway's consumers are only
counted. A message the load test lost is found there when the service behind a durable is not consuming.
The devices' offline statuses (their wills, published as the fleet closes) are still on their way then:
the state is read again until no durable holds anything, for up to `settle_s`.
"""

from __future__ import annotations

from typing import Any

from cloud.runtime.jetstream import MQTT_STREAM, redact_urls, split_urls
from cloud.runtime.mqtt import redact_all

JETSTREAM_TIMEOUT_S = 10.0
# the services' durables on `$MQTT_msgs` as `microfleet nats setup` names them by default: ingest's, and the
# alert engine's (on the uplinks, or on ingest's committed feed)
SERVICE_DURABLES = ("ingest", "alerts", "alerts-feed")


def describe_tier(mqtt_url: str, mqtt_version: str, nats_url: str | None) -> dict[str, Any]:
    """Pure: the tier as the report names it (URLs without passwords)."""
    gateways = redact_all(mqtt_url).split(",")
    return {
        "tier": "nats" if nats_url else "mqtt",
        "mqtt_version": mqtt_version,
        "brokers": gateways,
        "nats_url": redact_urls(nats_url) if nats_url else None,
        "jetstream": None,
    }


def tier_text(tier: dict[str, Any]) -> str:
    """Pure: one line for the report's table."""
    n = len(tier["brokers"])
    via = f"MQTT {tier['mqtt_version']} via {n} {'gateway' if n == 1 else 'gateways'}"
    if tier["tier"] != "nats":
        return f"MQTT broker ({via}: {', '.join(tier['brokers'])})"
    js = tier.get("jetstream") or {}
    if "error" in js:
        return f"NATS JetStream ({via}); state not read: {js['error']}"
    stream = js.get("stream") or {}
    return (
        f"NATS JetStream, nats-server {js.get('server_version', '?')} ({via}); {MQTT_STREAM} "
        f"R{stream.get('replicas', '?')}, leader {stream.get('leader', '?')}, {stream.get('messages', '?')} kept"
    )


def durable_text(name: str, d: dict[str, int]) -> str:
    return f"{d['pending']} pending, {d['unacked']} unacked, {d['redelivered']} redelivered"


async def jetstream_state(
    nats_url: str, settle_s: float = 0.0, names: tuple[str, ...] = SERVICE_DURABLES
) -> dict[str, Any]:
    """The server's version, `$MQTT_msgs` and its durables, read until no durable holds anything (at most
    `settle_s`); {"error": ...} when it cannot be read (the report says so rather than failing a run whose
    figures come from the database)."""
    import asyncio
    import time

    import nats
    from nats.js.errors import NotFoundError

    try:
        nc = await nats.connect(
            servers=split_urls(nats_url), connect_timeout=5.0, max_reconnect_attempts=2, allow_reconnect=True
        )
    except (OSError, TimeoutError, ValueError, nats.errors.Error) as exc:
        return {"error": f"connect: {exc!r}"}
    try:
        js = nc.jetstream(timeout=JETSTREAM_TIMEOUT_S)
        deadline = time.monotonic() + settle_s
        while True:
            info = await js.stream_info(MQTT_STREAM)
            durables = {}
            for name in names:
                try:
                    c = await js.consumer_info(MQTT_STREAM, name)
                except NotFoundError:  # a service this deployment does not run
                    continue
                durables[name] = {
                    "pending": int(c.num_pending or 0),
                    "unacked": int(c.num_ack_pending or 0),
                    "redelivered": int(c.num_redelivered or 0),
                }
            held = any(d["pending"] or d["unacked"] for d in durables.values())
            if not held or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
        version = nc.connected_server_version
        return {
            "server_version": f"{version.major}.{version.minor}.{version.patch}" if version else None,
            "stream": {
                "replicas": info.config.num_replicas,
                "leader": info.cluster.leader if info.cluster else None,
                "messages": info.state.messages,
            },
            "durables": durables,
            "gateway_consumers": int(info.state.consumer_count or 0) - len(durables),
        }
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        return {"error": f"{MQTT_STREAM}: {exc!r}"}
    finally:
        await nc.close()
