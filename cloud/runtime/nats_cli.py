"""`microfleet nats setup`: create the NATS tier's JetStream durables before any device connects.

`$MQTT_msgs` is an interest stream: a device's publish that no durable's filter covers is acknowledged by
the MQTT gateway and dropped (docs/decisions/nats-tier.md, decision 3). So a deployment runs this once
(like broker-setup on mosquitto), after the cluster is up and before the devices: it makes the gateway
create its streams (one MQTT 3.1.1 connect, clean session, if `$MQTT_msgs` does not exist yet) and creates
each durable (R3 like the stream, explicit ack, `max_ack_pending`, `ack_wait`): by default `ingest`
and `alerts`. A durable keeps what its service has not acknowledged (the stream retains a message until
every durable whose filter covers it acknowledged it): create only the durables of services you run.
Idempotent; `--update` applies new limits to durables that exist. Scaling a service in or out never
deletes a durable.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from cloud.runtime.jetstream import (
    DEFAULT_ACK_WAIT_S,
    DEFAULT_MAX_ACK_PENDING,
    MQTT_STREAM,
    DurableSpec,
    ensure_durable,
    redact_urls,
    split_urls,
)

app = typer.Typer(no_args_is_help=True, help="The NATS JetStream tier: set up its durables.")

SETUP_TIMEOUT_S = 60.0
# each service (ingest, the alert engine) reads from its own durable; the processes of one service share
# theirs (plan: which ones a feed mode needs)
FEEDS = ("uplinks", "committed")  # cloud.config.ALERT_FEEDS


def feed_durable(alert_group: str) -> str:
    """The name of the engine's durable on the alert feed (cloud.alerts.feed_source)."""
    from cloud.alerts.feed_source import FEED_DURABLE_SUFFIX

    return alert_group + FEED_DURABLE_SUFFIX


def durable_spec(name: str, *, max_ack_pending: int, ack_wait_s: float) -> DurableSpec:
    """A durable on device uplinks, or on the alert feed when its name ends in `-feed`."""
    from cloud.alerts.feed_source import FEED_DURABLE_SUFFIX, feed_subject

    if name.endswith(FEED_DURABLE_SUFFIX):
        return DurableSpec(
            name=name, filter_subject=feed_subject(), max_ack_pending=max_ack_pending, ack_wait_s=ack_wait_s
        )
    return DurableSpec(name=name, max_ack_pending=max_ack_pending, ack_wait_s=ack_wait_s)


def plan(
    feed: str, *, ingest_group: str = "ingest", alert_group: str = "alerts"
) -> tuple[list[str], list[str]]:
    """(the durables `feed` mode reads, the other mode's alert durable that must not linger)."""
    if feed not in FEEDS:
        raise ValueError(f"feed {feed!r}: use {' or '.join(FEEDS)}")
    uplinks, committed = alert_group, feed_durable(alert_group)
    if feed == "committed":
        return [ingest_group, committed], [uplinks]
    return [ingest_group, uplinks], [committed]


async def retire(js: Any, stream: str, name: str, *, delete: bool) -> str | None:
    """The state of a durable of the other feed mode: None when it does not exist, else what it holds
    ("N pending, M unacknowledged") and whether it was deleted."""
    from nats.js.errors import NotFoundError

    try:
        info = await js.consumer_info(stream, name)
    except NotFoundError:
        return None
    held = f"{info.num_pending or 0} pending, {info.num_ack_pending or 0} unacknowledged"
    if not delete:
        return f"left: {held}"
    try:
        await js.delete_consumer(stream, name)
    except Exception as exc:  # noqa: BLE001 - refused (permissions) or no leader: said, never a traceback
        return f"left: {held}; not deleted: {exc!r}"
    return f"deleted ({held} dropped)"


def make_streams(mqtt_url: str, timeout_s: float) -> None:
    """One clean MQTT 3.1.1 connect to the gateway: it creates its streams for the account."""
    from cloud.runtime.mqtt import MqttClient

    client = MqttClient(mqtt_url, f"mf-nats-setup-{os.getpid()}", version="3.1.1", clean_start=True)
    client.start()
    try:
        if not client.wait_connected(timeout_s):
            raise RuntimeError(f"no CONNACK from the MQTT gateway at {client.redacted}: {client.refusal}")
    finally:
        client.stop()


async def setup(
    urls: str,
    specs: list[DurableSpec],
    *,
    mqtt_url: str | None,
    update: bool = False,
    timeout_s: float = SETUP_TIMEOUT_S,
    other: Sequence[str] = (),
    delete_other: bool = False,
) -> dict[str, str]:
    """Create (or with `update` reconfigure) each durable; returns name -> created/exists/updated, and for
    each durable named in `other` that exists (another feed mode's) name -> "left: ..." or "deleted ..."
    (`delete_other`)."""
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(servers=split_urls(urls), connect_timeout=5.0, max_reconnect_attempts=10)
    try:
        js = nc.jetstream(timeout=10.0)
        deadline = time.monotonic() + timeout_s
        made = False
        outcomes: dict[str, str] = {}
        for spec in specs:
            while True:
                try:
                    outcomes[spec.name] = await ensure_durable(js, spec, update=update)
                    break
                except NotFoundError:  # the stream: the gateway makes it when an MQTT client connects
                    if mqtt_url is None:
                        raise RuntimeError(
                            f"stream {spec.stream} does not exist: give --mqtt-url (the gateway) so that "
                            "setup connects once and the gateway creates its streams"
                        ) from None
                    if not made:
                        await asyncio.to_thread(make_streams, mqtt_url, max(1.0, deadline - time.monotonic()))
                        made = True
                except (TimeoutError, nats.errors.Error) as exc:  # 503: the stream elects its leader
                    if time.monotonic() >= deadline:
                        raise RuntimeError(f"durable {spec.name} not set up: {exc!r}") from exc
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"stream {spec.stream} did not appear within {timeout_s:.0f} s")
                await asyncio.sleep(0.2)
        for name in other:
            if name in outcomes:
                continue
            state = await retire(js, specs[0].stream if specs else MQTT_STREAM, name, delete=delete_other)
            if state is not None:
                outcomes[name] = state
        return outcomes
    finally:
        await nc.close()


@app.command("setup")
def setup_command(
    url: Annotated[
        str, typer.Option(envvar="MICROFLEET_NATS_URL", help="nats://host:port[,nats://host:port...]")
    ],
    mqtt_url: Annotated[
        str | None,
        typer.Option(envvar="MICROFLEET_MQTT_URL", help="The MQTT gateway (to make its streams exist)."),
    ] = None,
    feed: Annotated[
        str,
        typer.Option(
            envvar="MICROFLEET_ALERT_FEED",
            help="The alert feed mode ingest and the engine run: uplinks (durables ingest + alerts) or "
            "committed (ingest + alerts-feed).",
        ),
    ] = "uplinks",
    ingest_group: Annotated[str, typer.Option(envvar="MICROFLEET_INGEST_GROUP")] = "ingest",
    alert_group: Annotated[str, typer.Option(envvar="MICROFLEET_ALERT_GROUP")] = "alerts",
    durable: Annotated[
        list[str] | None,
        typer.Option(
            help="Durable to create (repeat; a name ending in -feed reads the alert feed). Default: those "
            "of --feed. Create only those a service reads: `$MQTT_msgs` keeps each message until every "
            "durable acknowledged it."
        ),
    ] = None,
    delete_other: Annotated[
        bool,
        typer.Option(
            help="Delete the other feed mode's alert durable if it exists (what it held unread is not "
            "evaluated). Without it, setup only warns."
        ),
    ] = False,
    max_ack_pending: Annotated[
        int, typer.Option(min=1, help="Unacknowledged messages per durable, all processes together.")
    ] = DEFAULT_MAX_ACK_PENDING,
    ack_wait_s: Annotated[
        float, typer.Option(min=1.0, help="A message held longer goes to another process.")
    ] = DEFAULT_ACK_WAIT_S,
    update: Annotated[bool, typer.Option(help="Apply these limits to durables that exist.")] = False,
    timeout_s: Annotated[float, typer.Option(min=1.0)] = SETUP_TIMEOUT_S,
) -> None:
    """Create the JetStream durables of the NATS tier (before any device connects). Idempotent."""
    try:
        split_urls(url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        wanted, other = plan(feed.strip().lower(), ingest_group=ingest_group, alert_group=alert_group)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--feed") from None
    names = durable or wanted
    other = [o for o in other if o not in names]
    specs = [durable_spec(name, max_ack_pending=max_ack_pending, ack_wait_s=ack_wait_s) for name in names]
    try:
        outcomes: dict[str, Any] = asyncio.run(
            setup(
                url,
                specs,
                mqtt_url=mqtt_url,
                update=update,
                timeout_s=timeout_s,
                other=other,
                delete_other=delete_other,
            )
        )
    except (RuntimeError, OSError, TimeoutError) as exc:
        typer.echo(f"nats setup at {redact_urls(url)} failed: {exc}", err=True)
        raise typer.Exit(1) from None
    for name, outcome in outcomes.items():
        if name in other:
            if outcome.startswith("left"):
                typer.echo(
                    f"warning: durable {name} on {MQTT_STREAM} is not read in {feed} mode and holds what "
                    f"its filter covers until deleted ({outcome}); --delete-other deletes it",
                    err=True,
                )
            typer.echo(f"durable {name} on {MQTT_STREAM} (not read in {feed} mode): {outcome}")
        else:
            typer.echo(f"durable {name} on {MQTT_STREAM}: {outcome}")
