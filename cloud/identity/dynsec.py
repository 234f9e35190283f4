"""A client for Mosquitto's dynamic-security control API (`$CONTROL/dynamic-security/v1`).

Changes take effect at once, without a broker restart: a deleted client is disconnected immediately.
"""

from __future__ import annotations

import json
import threading
import uuid
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud.identity.policy import Command
from contract.mqtturl import parse_mqtt_url

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
ALREADY_EXISTS = ("already exists",)


class DynsecError(RuntimeError):
    """The broker refused a command; `.responses` holds every answer of the batch."""

    def __init__(self, message: str, responses: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.responses = responses


class DynsecClient:
    """Sends batches of commands and waits for the broker's answers (`with DynsecClient(url, ...) as c`)."""

    def __init__(self, mqtt_url: str, username: str, password: str, timeout_s: float = 10.0) -> None:
        self._address = parse_mqtt_url(mqtt_url)
        self._timeout = timeout_s
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"mf-admin-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self._client.username_pw_set(username, password)
        self._lock = threading.Lock()
        self._answers: list[dict[str, Any]] | None = None
        self._answered = threading.Event()
        self._subscribed = threading.Event()
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_args: self._subscribed.set()

    def __enter__(self) -> DynsecClient:
        if self._address.tls:
            self._client.tls_set()
        result = self._client.connect(self._address.host, self._address.port, keepalive=30)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"cannot reach the broker at {self._address.host}:{self._address.port}")
        self._client.loop_start()
        self._client.subscribe(RESPONSE_TOPIC, qos=1)
        if not self._subscribed.wait(self._timeout):
            raise TimeoutError(
                "the broker did not answer the subscription to the dynamic-security responses; "
                "is the dynamic-security plugin enabled and are the admin credentials right?"
            )
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        payload = json.loads(message.payload)
        self._answers = list(payload.get("responses", []))
        self._answered.set()

    def run(self, commands: list[Command], *, tolerate_exists: bool = False) -> list[dict[str, Any]]:
        """Send one batch and return the answers; raise DynsecError if any command failed."""
        with self._lock:
            self._answered.clear()
            self._client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
            if not self._answered.wait(self._timeout):
                raise TimeoutError(f"no answer from the broker's dynamic-security plugin in {self._timeout}s")
            answers = self._answers or []
        failed = [
            a
            for a in answers
            if "error" in a and not (tolerate_exists and any(s in a["error"] for s in ALREADY_EXISTS))
        ]
        if failed:
            detail = "; ".join(f"{a.get('command')}: {a['error']}" for a in failed)
            raise DynsecError(f"the broker refused: {detail}", answers)
        return answers

    def list_clients(self) -> list[str]:
        answers = self.run([{"command": "listClients", "verbose": False}])
        data = answers[0].get("data", {}) if answers else {}
        return [str(c) for c in data.get("clients", [])]
