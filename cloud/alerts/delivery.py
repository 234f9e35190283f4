"""Device delivery: notices (QoS 1, not retained) and safety gates (QoS 1, retained) from their outboxes.

The worker wakes when the engine commits (`wake()`) or every `timer_s` (held notices whose quiet hours
ended). It claims due rows with `FOR UPDATE SKIP LOCKED` (so several engines never send the same row at
once), publishes them, waits for the broker's PUBACKs and only then marks them sent, in the same
transaction. A crash in between resends on the next round: at least once, and the agent dedups by
`notice_id` (a gate is a retained desired state: resending it is harmless by nature).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from cloud.alerts.config import AlertConfig
from cloud.alerts.worker import OutboxWorker
from contract import topics
from contract.codec import encode
from contract.messages import Notice, SafetyGate, Severity
from contract.mqtturl import parse_mqtt_url

log = logging.getLogger(__name__)
BATCH = 200
PUBACK_TIMEOUT_S = 10.0

DUE_NOTICES = """
-- the most severe first: a critical notice never waits behind a storm of warnings
select id, notice_id, device_id, severity::text, rule_id, text, expires_at from notice_outbox
where sent_at is null and release_at <= %(now)s and (expires_at is null or expires_at > %(now)s)
order by severity desc, release_at, id limit %(limit)s for update skip locked
"""
DUE_GATES = """
select device_id, blocked, reasons, text, version from safety_gates
where published_version < version order by device_id limit %(limit)s for update skip locked
"""


class Publisher:
    """A paho MQTT 5 client for the downlinks, with its own network thread (owned: start/stop)."""

    def __init__(self, mqtt_url: str, client_id: str) -> None:
        self.addr = parse_mqtt_url(mqtt_url)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if self.addr.username:
            c.username_pw_set(self.addr.username, self.addr.password)
        if self.addr.tls:
            c.tls_set()
        c.max_inflight_messages_set(BATCH)
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        self.connected = threading.Event()
        c.on_connect = lambda *_a: self.connected.set()
        c.on_disconnect = lambda *_a: self.connected.clear()
        self.client = c

    def start(self) -> None:
        self.client.connect_async(self.addr.host, self.addr.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish_all(
        self, messages: list[tuple[str, bytes, bool]], timeout: float = PUBACK_TIMEOUT_S
    ) -> list[bool]:
        """Publish at QoS 1; True for each message the broker acknowledged within the timeout."""
        if not messages or not self.connected.is_set():
            return [False] * len(messages)
        infos = [self.client.publish(t, p, qos=1, retain=r) for t, p, r in messages]
        deadline = time.monotonic() + timeout
        out = []
        for info in infos:
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            out.append(info.rc == mqtt.MQTT_ERR_SUCCESS and info.is_published())
        return out


class DeliveryWorker(OutboxWorker):
    name = "delivery"

    def __init__(self, cfg: AlertConfig, publisher: Publisher, clock: Callable[[], datetime]) -> None:
        super().__init__(cfg.database_url, cfg.timer_s, PUBACK_TIMEOUT_S + 5)
        self.cfg, self.publisher, self.clock = cfg, publisher, clock
        self.sent_notices = 0
        self.sent_gates = 0

    def round(self, conn: psycopg.Connection[Any]) -> bool:
        """One claim-publish-mark round; True if a full batch was found (more may be due)."""
        now = self.clock()
        with conn.transaction():
            rows = conn.execute(DUE_NOTICES, {"now": now, "limit": BATCH}).fetchall()
            msgs = [
                (
                    topics.downlink(dev, topics.Downlink.NOTICE),
                    encode(
                        Notice(
                            device_id=dev,
                            ts=now,
                            notice_id=nid,
                            severity=Severity(sev),
                            text=text,
                            rule_id=rule,
                            expires_at=exp,
                        )
                    ),
                    False,
                )
                for _id, nid, dev, sev, rule, text, exp in rows
            ]
            ok = self.publisher.publish_all(msgs)
            done = [r[0] for r, good in zip(rows, ok, strict=True) if good]
            if done:
                conn.execute(
                    "update notice_outbox set sent_at = %s, attempts = attempts + 1 where id = any(%s)",
                    (now, done),
                )
            self.sent_notices += len(done)
        with conn.transaction():
            gates = conn.execute(DUE_GATES, {"limit": BATCH}).fetchall()
            gmsgs = [
                (
                    topics.downlink(dev, topics.Downlink.GATE),
                    encode(
                        SafetyGate(device_id=dev, ts=now, blocked=blocked, reasons=tuple(reasons), text=text)
                    ),
                    True,
                )
                for dev, blocked, reasons, text, _v in gates
            ]
            gok = self.publisher.publish_all(gmsgs)
            for (dev, *_rest, version), good in zip(gates, gok, strict=True):
                if good:
                    conn.execute(
                        "update safety_gates set published_version = %s where device_id = %s", (version, dev)
                    )
                    self.sent_gates += 1
        return (len(rows) == BATCH and len(done) == len(rows)) or (len(gates) == BATCH and all(gok))
