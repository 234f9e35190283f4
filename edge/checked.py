"""aiomqtt with the MQTT 5 PUBACK reason code surfaced (aiomqtt itself hides it).

mosquitto answers a QoS 1 publish with 0x10 "no matching subscribers" when no subscription matches (for
microfleet: the ingest group has no live member, e.g. just after a broker restart) and DROPS the
message, and with a code >= 0x80 when it refuses it (e.g. 0x87 Not authorized from an ACL). Neither
message was taken: `taken(code)` says so.
"""

from __future__ import annotations

import asyncio

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

SUCCESS = 0x00
NO_MATCHING_SUBSCRIBERS = 0x10


def taken(code: int) -> bool:
    """Did the broker take a message it acknowledged with this PUBACK reason code?"""
    return code == SUCCESS


class PublishRefused(aiomqtt.MqttError):
    """The broker answered a QoS 1 publish with a failure reason code: the message was not accepted."""

    def __init__(self, topic: str, reason: ReasonCode) -> None:
        super().__init__(f"broker refused publish to {topic}: {reason} ({reason.value:#x})")
        self.reason = reason


class CheckedClient(aiomqtt.Client):
    """`publish_code` returns the PUBACK's reason code; `publish_checked` raises PublishRefused >= 0x80."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._codes: dict[int, ReasonCode] = {}

    def _on_publish(
        self, client: object, userdata: object, mid: int, reason_code: ReasonCode, properties: object
    ) -> None:
        if reason_code.value != SUCCESS:
            self._codes[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)  # type: ignore[arg-type]

    async def publish_code(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode | None:
        """Publish at QoS 1 and wait for the PUBACK: None when taken (0x00), else its reason code."""
        info = self._client.publish(topic, payload, 1, retain)
        if info.rc != 0:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if not info.is_published():
            confirmation = asyncio.Event()
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                await confirmation.wait()  # a dead connection ends the caller's task group (keepalive)
        return self._codes.pop(info.mid, None)

    async def publish_checked(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1; raise PublishRefused on a failure code (>= 0x80). 0x10 is accepted: for a
        retained message (the birth) the broker keeps it whoever subscribes."""
        code = await self.publish_code(topic, payload, retain=retain)
        if code is not None and code.is_failure:
            raise PublishRefused(topic, code)
