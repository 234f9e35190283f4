"""The alert engine's settings: a frozen object built once from `CloudConfig` and `MICROFLEET_ALERT_*`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import time

from cloud.config import CloudConfig


class AlertConfigError(ValueError):
    """A MICROFLEET_ALERT_* variable has a value that cannot be used; the message says which."""


def _hhmm(name: str, value: str) -> time:
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise AlertConfigError(f"{name}={value!r} is not a time of day: use HH:MM, e.g. 22:00") from None


@dataclass(frozen=True, slots=True)
class AlertConfig:
    database_url: str
    mqtt_url: str
    mqtt_ca_file: str | None = None
    # the NATS tier (MICROFLEET_NATS_URL): uplinks from the JetStream durable named by `group`, and
    # downlinks through the MQTT gateway at mqtt_version 3.1.1 (cloud.ingest.source)
    nats_url: str = ""
    mqtt_version: str = "5"
    group: str = "alerts"
    consumer_id: str = "alerts-1"
    receive_maximum: int = 2000
    session_expiry_s: int = 7 * 24 * 3600
    batch_max_messages: int = 500
    batch_max_delay_s: float = 0.02
    quiet_start: time = time(22, 0)  # device notices below critical wait until quiet_end, user's local time
    quiet_end: time = time(8, 0)
    notice_ttl_s: float = 24 * 3600.0
    notice_max_age_s: float = 24 * 3600.0  # no device notice for an episode older than this (late upload)
    webhook_url: str = ""
    webhook_max_attempts: int = 8
    webhook_backoff_base_s: float = 1.0
    webhook_backoff_cap_s: float = 300.0
    webhook_timeout_s: float = 5.0
    gate_poll_s: float = 2.0
    timer_s: float = 1.0  # held notices, snooze expiry and retries are looked at this often
    sweep_s: float = 3600.0  # open sliding-rule alerts (O5, T2, T4) are re-evaluated this often per device
    # on SIGTERM, leave the consumer group (unsubscribe, ack what is held, end the session): right for a
    # scale-in; a lone engine that restarts keeps its session instead, so nothing published meanwhile is
    # lost to it (nothing re-sends to the engine what ingest already committed)
    leave_on_stop: bool = False
    # MICROFLEET_ALERT_FEED (CloudConfig.alert_feed): "uplinks", the engine's own subscription to device
    # traffic; "committed", the batches ingest committed (cloud.alerts.feed_source)
    feed: str = "uplinks"

    @classmethod
    def from_env(
        cls, cloud: CloudConfig, env: Mapping[str, str] | None = None, **overrides: object
    ) -> AlertConfig:
        e = os.environ if env is None else env
        p = "MICROFLEET_ALERT_"
        try:
            values: dict[str, object] = {
                "database_url": cloud.database_url,
                "mqtt_url": cloud.mqtt_url,
                "mqtt_ca_file": cloud.mqtt_ca_file,
                "nats_url": cloud.nats_url,
                "mqtt_version": cloud.mqtt_version,
                "session_expiry_s": cloud.session_expiry_s,
                "feed": cloud.alert_feed,
                "group": e.get(p + "GROUP", "alerts"),
                "consumer_id": e.get(p + "CONSUMER_ID", "alerts-1"),
                "receive_maximum": int(e.get(p + "RECEIVE_MAXIMUM", "2000")),
                "batch_max_messages": int(e.get(p + "BATCH_MAX_MESSAGES", "500")),
                "batch_max_delay_s": float(e.get(p + "BATCH_MAX_DELAY_S", "0.02")),
                "quiet_start": _hhmm(p + "QUIET_START", e.get(p + "QUIET_START", "22:00")),
                "quiet_end": _hhmm(p + "QUIET_END", e.get(p + "QUIET_END", "08:00")),
                "notice_ttl_s": float(e.get(p + "NOTICE_TTL_S", str(24 * 3600))),
                "notice_max_age_s": float(e.get(p + "NOTICE_MAX_AGE_S", str(24 * 3600))),
                "webhook_url": e.get(p + "WEBHOOK_URL", ""),
                "webhook_max_attempts": int(e.get(p + "WEBHOOK_MAX_ATTEMPTS", "8")),
                "webhook_backoff_base_s": float(e.get(p + "WEBHOOK_BACKOFF_BASE_S", "1")),
                "webhook_backoff_cap_s": float(e.get(p + "WEBHOOK_BACKOFF_CAP_S", "300")),
                "gate_poll_s": float(e.get(p + "GATE_POLL_S", "2")),
                "sweep_s": float(e.get(p + "SWEEP_S", "3600")),
                "leave_on_stop": e.get(p + "LEAVE_ON_STOP", "").lower() in ("1", "true", "yes"),
            }
        except ValueError as exc:
            if isinstance(exc, AlertConfigError):
                raise
            raise AlertConfigError(f"a MICROFLEET_ALERT_* number is malformed: {exc}") from None
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def but(self, **changes: object) -> AlertConfig:
        return replace(self, **changes)  # type: ignore[arg-type]
