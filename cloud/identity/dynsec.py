"""A client for Mosquitto's dynamic-security control API (`$CONTROL/dynamic-security/v1`).

Changes take effect at once, without a broker restart: a deleted client is disconnected immediately.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from cloud.identity.policy import Command
from cloud.runtime.mqtt import UNREACHABLE, MqttClient

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

    def __init__(
        self,
        mqtt_url: str,
        username: str,
        password: str,
        timeout_s: float = 10.0,
        *,
        ca_file: str | None = None,
    ) -> None:
        self._timeout = timeout_s
        self._mqtt = MqttClient(mqtt_url, f"mf-admin-{uuid.uuid4().hex[:8]}", ca_file=ca_file)
        self._client = self._mqtt.client
        self._client.username_pw_set(username, password)
        self._lock = threading.Lock()
        self._answers: list[dict[str, Any]] | None = None
        self._answered = threading.Event()
        self._subscribed = threading.Event()
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_args: self._subscribed.set()
        # on every connect: a reconnect gets a new session, so the responses are subscribed again
        self._mqtt.on_up.append(self._subscribe)

    def _subscribe(self, _session_present: bool) -> None:
        self._client.subscribe(RESPONSE_TOPIC, qos=1)

    def __enter__(self) -> DynsecClient:
        self._mqtt.start()
        deadline = time.monotonic() + self._timeout
        while not self._mqtt.wait_connected(0.05):
            # a CONNACK refusal (credentials, ...) is final; a broker not answering yet (a stack starting,
            # a broker restarting) is retried by the client with backoff until the deadline
            refused = self._mqtt.refusal not in ("", UNREACHABLE)
            if refused or time.monotonic() >= deadline:
                self._mqtt.stop()
                why = self._mqtt.refusal or "no answer"
                raise ConnectionError(f"cannot connect to the broker at {self._mqtt.redacted}: {why}")
        if not self._subscribed.wait(max(0.0, deadline - time.monotonic())):
            self._mqtt.stop()
            raise TimeoutError(
                "the broker did not answer the subscription to the dynamic-security responses; "
                "is the dynamic-security plugin enabled and are the admin credentials right?"
            )
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._mqtt.stop()

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
