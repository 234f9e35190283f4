"""The edge agent's configuration: one frozen object, built once from the environment and passed down.

Every variable is optional except the device id. Defaults size the outbox so that a heavy user's device
(a clinic doing 10 x 60 min sessions a day, 3,600 messages a day) can stay offline for two weeks without
losing anything: 50,000 messages or 64 MiB, whichever is reached first (see edge/README.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from contract.errors import ContractError
from contract.mqtturl import parse_mqtt_url
from contract.topics import check_device_id

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
DEFAULT_OUTBOX_MAX_ROWS = 50_000
DEFAULT_OUTBOX_MAX_BYTES = 64 * 1024 * 1024
# 30 samples (30 s of a session at 1 Hz) per message: a million devices with one 10-minute session a day
# peak at about 70,000 samples/s in the evening; at 30 per message that is ~2,300 messages/s, which one
# small ingest machine carries (docs/performance.md), where 10 per message would need three times the
# per-message work. Safety limits are enforced on the device itself, so batching delays only cloud views.
DEFAULT_SAMPLES_PER_BATCH = 30
DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600

DEFAULT_COMMIT_TIMEOUT_S = 60.0
DEFAULT_COMMIT_TIMEOUT_MAX_S = 900.0
DEFAULT_SYNC_FILL_RATIO = 0.8

SyncMode = Literal["full", "normal", "off"]
# the MQTT protocol level of the agent's connection (edge/connect.py): "3.1.1" for the NATS MQTT gateway
MqttVersion = Literal["5", "3.1.1"]
# "committed": a message leaves the outbox only when the cloud's CommitMark covers it (end to end).
# "broker": on its PUBACK (the broker took it), for a broker without microfleet's cloud (bare benchmarks).
AckMode = Literal["committed", "broker"]


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and what to do."""


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    device_id: str
    data_dir: Path
    # one broker, or several of one cluster comma-separated: the link moves to the next after every
    # connection that ended or failed (edge/connect.py)
    mqtt_url: str = DEFAULT_MQTT_URL
    mqtt_version: MqttVersion = "5"
    outbox_max_rows: int = DEFAULT_OUTBOX_MAX_ROWS
    outbox_max_bytes: int = DEFAULT_OUTBOX_MAX_BYTES
    # "full" fsyncs every commit: the per-device seq never repeats even after a power cut. "normal"
    # survives a process crash but not a power cut; the simulator uses it for thousands of agents.
    outbox_sync: SyncMode = "full"
    samples_per_batch: int = DEFAULT_SAMPLES_PER_BATCH
    model: str = "mf-home-1"
    hw_rev: str = "A"
    fw_version: str = "0.1.0"
    tz_offset_min: int = 0
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    inflight: int = 20
    # Broker-side session lifetime (MQTT 5 Session Expiry): downlink QoS 1 messages queue this long while
    # the device is offline. 0 = clean session on every connect.
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S
    overflow_event_interval_s: float = 3600.0
    # End-to-end acknowledgement (edge/README.md "Delivery guarantee"). The commit timeout runs on real
    # (event-loop) time: a sent message still uncovered by a mark after it is sent again (with a
    # SyncRequest); the timeout doubles up to commit_timeout_max_s while no mark advances.
    ack_mode: AckMode = "committed"
    commit_timeout_s: float = DEFAULT_COMMIT_TIMEOUT_S
    commit_timeout_max_s: float = DEFAULT_COMMIT_TIMEOUT_MAX_S
    # ask for a mark when the outbox is this full (of max_rows or max_bytes) with sent messages uncovered
    sync_fill_ratio: float = DEFAULT_SYNC_FILL_RATIO

    # Simulators only (None on a real device): the path of a multi-device outbox file (edge.outbox.
    # OutboxFile) that this agent shares with the other agents of its process. The file must be opened
    # with OutboxFile before the agent starts. Cuts about 190 KiB and 3 fds per simulated agent.
    outbox_file: Path | None = None
    # Treatment protocols (edge/protocols.py): a JSON file of TrustedKey entries (one object or a list),
    # as printed by `microfleet keys generate`. None: no key is trusted, every protocol is rejected.
    trusted_keys_file: Path | None = None

    def __post_init__(self) -> None:
        try:
            check_device_id(self.device_id)
            if not self.mqtt_urls:
                raise ValueError("MICROFLEET_MQTT_URL is empty")
            for url in self.mqtt_urls:
                parse_mqtt_url(url)
        except (ContractError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        if self.mqtt_version not in ("5", "3.1.1"):
            raise ConfigError(
                f"mqtt_version (MICROFLEET_EDGE_MQTT_VERSION) must be 5 or 3.1.1 (the NATS MQTT gateway), "
                f"got {self.mqtt_version!r}"
            )
        positive = ("outbox_max_rows", "outbox_max_bytes", "samples_per_batch", "keepalive_s", "inflight")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.samples_per_batch > 600:
            raise ConfigError("samples_per_batch must be <= 600 (contract MAX_SAMPLES_PER_BATCH)")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError("need 0 < reconnect_min_s <= reconnect_max_s")
        if self.outbox_sync not in ("full", "normal", "off"):
            raise ConfigError(f"outbox_sync must be full, normal or off, got {self.outbox_sync!r}")
        if self.ack_mode not in ("committed", "broker"):
            raise ConfigError(
                f"ack_mode (MICROFLEET_EDGE_ACK) must be 'committed' (delete on the cloud's commit mark) "
                f"or 'broker' (delete on PUBACK, no microfleet cloud), got {self.ack_mode!r}"
            )
        if not 0 < self.commit_timeout_s <= self.commit_timeout_max_s:
            raise ConfigError(
                "need 0 < commit_timeout_s <= commit_timeout_max_s (MICROFLEET_EDGE_COMMIT_TIMEOUT_S / "
                f"_MAX_S), got {self.commit_timeout_s} and {self.commit_timeout_max_s}"
            )
        if not 0 < self.sync_fill_ratio <= 1:
            raise ConfigError(f"sync_fill_ratio must be within (0, 1], got {self.sync_fill_ratio}")

    @property
    def mqtt_urls(self) -> tuple[str, ...]:
        """The broker URLs of mqtt_url, in the order the link tries them."""
        return tuple(u.strip() for u in self.mqtt_url.split(",") if u.strip())

    @property
    def outbox_path(self) -> Path:
        return self.outbox_file if self.outbox_file is not None else self.data_dir / "outbox.sqlite3"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> EdgeConfig:
        """Build from MICROFLEET_* variables; keyword overrides (from CLI options) win."""
        e = os.environ if env is None else env
        values: dict[str, object] = {}
        device_id = e.get("MICROFLEET_DEVICE_ID")
        if device_id:
            values["device_id"] = device_id
        values["data_dir"] = Path(e.get("MICROFLEET_EDGE_DATA_DIR", "./.microfleet-edge"))
        values["mqtt_url"] = e.get("MICROFLEET_MQTT_URL", DEFAULT_MQTT_URL)
        for field, var, kind in _ENV_FIELDS:
            raw = e.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[field] = kind(raw)
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not a valid {kind.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "device_id" not in values:
            raise ConfigError("no device id: set MICROFLEET_DEVICE_ID or pass --device-id")
        if not isinstance(values["data_dir"], Path):
            values["data_dir"] = Path(str(values["data_dir"]))
        return cls(**values)  # type: ignore[arg-type]


_ENV_FIELDS: tuple[tuple[str, str, type], ...] = (
    ("outbox_max_rows", "MICROFLEET_EDGE_OUTBOX_MAX_ROWS", int),
    ("outbox_max_bytes", "MICROFLEET_EDGE_OUTBOX_MAX_BYTES", int),
    ("outbox_sync", "MICROFLEET_EDGE_OUTBOX_SYNC", str),
    ("samples_per_batch", "MICROFLEET_EDGE_SAMPLES_PER_BATCH", int),
    ("model", "MICROFLEET_EDGE_MODEL", str),
    ("hw_rev", "MICROFLEET_EDGE_HW_REV", str),
    ("fw_version", "MICROFLEET_EDGE_FW_VERSION", str),
    ("tz_offset_min", "MICROFLEET_EDGE_TZ_OFFSET_MIN", int),
    ("keepalive_s", "MICROFLEET_EDGE_KEEPALIVE_S", int),
    ("reconnect_min_s", "MICROFLEET_EDGE_RECONNECT_MIN_S", float),
    ("reconnect_max_s", "MICROFLEET_EDGE_RECONNECT_MAX_S", float),
    ("inflight", "MICROFLEET_EDGE_INFLIGHT", int),
    ("session_expiry_s", "MICROFLEET_EDGE_SESSION_EXPIRY_S", int),
    ("trusted_keys_file", "MICROFLEET_EDGE_TRUSTED_KEYS", Path),
    ("ack_mode", "MICROFLEET_EDGE_ACK", str),
    ("mqtt_version", "MICROFLEET_EDGE_MQTT_VERSION", str),
    ("commit_timeout_s", "MICROFLEET_EDGE_COMMIT_TIMEOUT_S", float),
    ("commit_timeout_max_s", "MICROFLEET_EDGE_COMMIT_TIMEOUT_MAX_S", float),
    ("sync_fill_ratio", "MICROFLEET_EDGE_SYNC_FILL_RATIO", float),
)
