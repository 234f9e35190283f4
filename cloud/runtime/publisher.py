"""A QoS 1 publisher that reports, for each message, the broker's PUBACK reason code.

PUBACK does not mean "delivered": mosquitto answers 0x10 "no matching subscribers" (and drops the
message) when nobody subscribes, and >= 0x80 when it refuses it (0x87: not authorised by the ACL). So
`publish_many` returns one Outcome per message and each caller decides: a refusal (>= 0x80), a timeout
or "not connected" is a failure, never counted as sent; 0x10 is `accepted` but not `matched` (fine for
retained desired state, which the broker stores; not for a notice, which nobody got).

Over MQTT 3.1.1 (`version="3.1.1"`: the NATS tier's gateway) a PUBACK has no reason code: every
acknowledged publish reads 0x00, so `matched` only means taken there, and a refusal shows as a closed
connection (NOT_CONNECTED or TIMEOUT), never as >= 0x80.

    with Publisher(url, "alerts-1-down") as pub:
        outcomes = pub.publish_many([Outgoing(topic, payload, retain=True)], timeout_s=10)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt

from cloud.runtime.mqtt import MqttClient, MqttVersion
from cloud.runtime.threads import guarded

log = logging.getLogger(__name__)
NO_MATCHING_SUBSCRIBERS = 0x10
DEFAULT_INFLIGHT = 200
PUBACK_TIMEOUT_S = 10.0


class Outgoing(NamedTuple):
    topic: str
    payload: bytes
    retain: bool = False


class Outcome(NamedTuple):
    """`reason`: the PUBACK reason code, or None when no PUBACK came (`failure` says why)."""

    reason: int | None
    failure: str = ""

    @property
    def accepted(self) -> bool:
        """The broker took it (0x00, or 0x10: stored if retained, otherwise dropped for lack of a subscriber)."""
        return self.reason is not None and self.reason < 0x80

    @property
    def matched(self) -> bool:
        """Taken and routed to at least one subscription (reason 0x00)."""
        return self.reason == 0

    @property
    def no_subscribers(self) -> bool:
        return self.reason == NO_MATCHING_SUBSCRIBERS

    def __str__(self) -> str:
        return self.failure if self.reason is None else f"0x{self.reason:02x} {self.failure}".strip()


NOT_CONNECTED = Outcome(None, "not connected")
TIMEOUT = Outcome(None, "timeout")


class Publisher:
    """QoS 1 publishes over one MqttClient (its own network thread; owned: start/stop or `with`)."""

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        ca_file: str | None = None,
        inflight: int = DEFAULT_INFLIGHT,
        keepalive_s: int = 30,
        version: MqttVersion = "5",
    ) -> None:
        self.mqtt = MqttClient(
            url, client_id, ca_file=ca_file, inflight=inflight, keepalive_s=keepalive_s, version=version
        )
        self.mqtt.client.on_publish = guarded(f"MQTT {client_id} on_publish", self._handle_publish)
        self._lock = threading.Lock()
        self._reasons: dict[int, tuple[int, str]] = {}
        self.refused = 0
        self.no_subscribers = 0

    @property
    def connected(self) -> threading.Event:
        return self.mqtt.connected

    def start(self) -> None:
        self.mqtt.start()

    def stop(self) -> None:
        self.mqtt.stop()

    def wait_connected(self, timeout_s: float) -> bool:
        return self.mqtt.wait_connected(timeout_s)

    def __enter__(self) -> Publisher:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _handle_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        # called before paho marks the message published, under paho's lock: keep it short
        with self._lock:
            self._reasons[mid] = (int(rc.value), "" if rc.value == 0 else str(rc))

    def publish_many(
        self, messages: Sequence[Outgoing | tuple[str, bytes, bool]], timeout_s: float = PUBACK_TIMEOUT_S
    ) -> list[Outcome]:
        """Publish each message at QoS 1 and wait (up to `timeout_s` overall) for its PUBACK."""
        if not messages:
            return []
        if not self.mqtt.connected.is_set():
            return [NOT_CONNECTED] * len(messages)
        infos = [self.mqtt.client.publish(t, p, qos=1, retain=r) for t, p, r in messages]
        deadline = time.monotonic() + timeout_s
        out: list[Outcome] = []
        for info in infos:
            if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                out.append(Outcome(None, mqtt.error_string(info.rc)))
                continue
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):  # the connection went away before it was sent
                out.append(NOT_CONNECTED)
                continue
            if not info.is_published():
                out.append(TIMEOUT if self.mqtt.connected.is_set() else NOT_CONNECTED)
                continue
            with self._lock:
                reason, name = self._reasons.pop(info.mid, (0, ""))
            out.append(Outcome(reason, name))
        refused = sum(1 for o in out if o.reason is not None and o.reason >= 0x80)
        self.refused += refused
        self.no_subscribers += sum(1 for o in out if o.no_subscribers)
        if refused:
            first = next(o for o in out if o.reason is not None and o.reason >= 0x80)
            log.warning(
                "%s: the broker refused %d of %d messages (%s)", self.mqtt.client_id, refused, len(out), first
            )
        return out
