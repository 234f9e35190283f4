"""Cloud configuration: a frozen object built once from the environment (MICROFLEET_*) and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/microfleet"
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"


def _flag(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r}: use true or false")


def _port(value: str) -> int | None:
    v = value.strip()
    if not v:
        return None
    if not v.isdigit() or int(v) > 65535:
        raise ValueError(f"MICROFLEET_METRICS_PORT={value!r}: use a TCP port (0: any free port), or unset it")
    return int(v)


ALERT_FEEDS = ("uplinks", "committed")


def _feed(value: str) -> str:
    v = value.strip().lower()
    if v not in ALERT_FEEDS:
        raise ValueError(f"MICROFLEET_ALERT_FEED={value!r}: use committed or uplinks")
    return v


@dataclass(frozen=True, slots=True)
class CloudConfig:
    database_url: str = DEFAULT_DATABASE_URL
    mqtt_url: str = DEFAULT_MQTT_URL
    mqtt_ca_file: str | None = None  # a CA bundle to trust for mqtts:// (default: the system's)
    # "3.1.1" for the NATS tier's MQTT gateway (the default when nats_url is set), else "5"
    mqtt_version: str = "5"
    # the NATS tier (docs/decisions/nats-tier.md): `nats://h1:p1,nats://h2:p2`; set, ingest reads uplinks
    # from JetStream (its durable is ingest_group) instead of an MQTT shared subscription
    nats_url: str = ""
    # ingest
    ingest_group: str = "ingest"
    consumer_id: str = "ingest-1"
    batch_max_messages: int = 2000
    batch_max_delay_s: float = 0.05
    # writer threads of one ingest process, each committing whole batches on its own connection
    ingest_writers: int = 2
    receive_maximum: int = 8000
    session_expiry_s: int = 7 * 24 * 3600
    # commit marks (CommitMark downlinks): after mark_delay_s since a device's first unsent advance, or
    # after mark_every messages, looked for every mark_interval_s
    mark_delay_s: float = 10.0
    mark_every: int = 100
    mark_interval_s: float = 1.0
    # False only for a fleet of devices that delete on PUBACK (MICROFLEET_EDGE_ACK=broker) or to measure
    # what the acknowledgement costs (bench/ingest.py): no receipts, no marks, no mark publisher
    commit_marks: bool = True
    # identity: the broker's dynamic-security admin, and the broker address handed to devices
    broker_admin_url: str = "mqtt://admin@127.0.0.1:1883"
    device_mqtt_url: str = DEFAULT_MQTT_URL
    # /metrics, /healthz and /readyz of ingest, alerts run and ota serve (cloud/runtime/metrics.py): off
    # unless a port is set (0: any free port); the API serves them on its own port
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # how the alert engine gets its uplinks (docs/decisions/alert-feed.md): "uplinks", its own shared
    # subscription / durable on device traffic; "committed", one message per batch ingest committed, on
    # topics.COMMITTED_FEED (ingest publishes it, the engine reads it; set the same on both)
    alert_feed: str = "uplinks"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> CloudConfig:
        e = os.environ if env is None else env
        values: dict[str, object] = {
            "database_url": e.get("MICROFLEET_DATABASE_URL", DEFAULT_DATABASE_URL),
            "mqtt_url": e.get("MICROFLEET_MQTT_URL", DEFAULT_MQTT_URL),
            "mqtt_ca_file": e.get("MICROFLEET_MQTT_CA_FILE") or None,
            "nats_url": e.get("MICROFLEET_NATS_URL", ""),
            "mqtt_version": e.get("MICROFLEET_MQTT_VERSION")
            or ("3.1.1" if e.get("MICROFLEET_NATS_URL") else "5"),
            "ingest_group": e.get("MICROFLEET_INGEST_GROUP", "ingest"),
            "consumer_id": e.get("MICROFLEET_CONSUMER_ID", "ingest-1"),
            "batch_max_messages": int(e.get("MICROFLEET_BATCH_MAX_MESSAGES", "2000")),
            "batch_max_delay_s": float(e.get("MICROFLEET_BATCH_MAX_DELAY_S", "0.05")),
            "ingest_writers": int(e.get("MICROFLEET_INGEST_WRITERS", "2")),
            "receive_maximum": int(e.get("MICROFLEET_RECEIVE_MAXIMUM", "8000")),
            "session_expiry_s": int(e.get("MICROFLEET_SESSION_EXPIRY_S", str(7 * 24 * 3600))),
            "mark_delay_s": float(e.get("MICROFLEET_MARK_DELAY_S", "10.0")),
            "mark_every": int(e.get("MICROFLEET_MARK_EVERY", "100")),
            "mark_interval_s": float(e.get("MICROFLEET_MARK_INTERVAL_S", "1.0")),
            "commit_marks": _flag(e.get("MICROFLEET_COMMIT_MARKS", "true"), "MICROFLEET_COMMIT_MARKS"),
            "broker_admin_url": e.get("MICROFLEET_BROKER_ADMIN_URL", "mqtt://admin@127.0.0.1:1883"),
            "device_mqtt_url": e.get(
                "MICROFLEET_DEVICE_MQTT_URL", e.get("MICROFLEET_MQTT_URL", DEFAULT_MQTT_URL)
            ),
            "metrics_port": _port(e.get("MICROFLEET_METRICS_PORT", "")),
            "metrics_host": e.get("MICROFLEET_METRICS_HOST", "127.0.0.1"),
            "alert_feed": _feed(e.get("MICROFLEET_ALERT_FEED", "uplinks")),
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
