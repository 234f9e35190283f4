"""What the alert engine cannot evaluate, recorded instead of retried: no input stops the engine.

A message is refused when the contract refuses it (`Reason` of contract/errors.py), when it holds a value
PostgreSQL cannot store (`unstorable`: a NUL character in a string, which neither text nor jsonb holds),
when the database refuses its rows (`db_refused`, found by isolating it) or when its evaluation raised
(`evaluation_failed`). Each one is logged with its topic, a sanitised reason and a payload excerpt,
written to `alert_refused` (migration 0103) in the batch's transaction, and acknowledged with the batch.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from cloud.alerts.store import Conn

log = logging.getLogger(__name__)

UNSTORABLE = "unstorable"
DB_REFUSED = "db_refused"
EVALUATION_FAILED = "evaluation_failed"
DETAIL_MAX = 500
EXCERPT_BYTES = 80
REPLACEMENT = "\ufffd"

INSERT = (
    "insert into alert_refused (refused_at, topic, payload, payload_sha256, reason, detail, consumer) "
    "select %s, t, p, s, r, d, %s from unnest(%s::text[], %s::bytea[], %s::bytea[], %s::text[], %s::text[]) "
    "as u(t, p, s, r, d) on conflict (topic, payload_sha256) do nothing"
)


def sanitise(text: str, limit: int = DETAIL_MAX) -> str:
    """`text` as PostgreSQL text and jsonb can hold it: NUL and lone surrogates replaced, bounded."""
    out = text[:limit].replace("\x00", REPLACEMENT)
    if any("\ud800" <= c <= "\udfff" for c in out):
        out = "".join(REPLACEMENT if "\ud800" <= c <= "\udfff" else c for c in out)
    return out


def has_nul(value: Any) -> bool:
    """True if a string anywhere in `value` (a decoded message, as builtins) holds a NUL character."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(v) for v in value)
    return False


def unstorable(payload: bytes, message: msgspec.Struct) -> str | None:
    """Why PostgreSQL could not store this decoded message, or None. A NUL can only reach a string
    through the JSON escape `\\u0000`, so messages without it in their bytes cost one search."""
    if b"\\u0000" not in payload:
        return None
    if has_nul(msgspec.to_builtins(message)):
        return "a string holds a NUL character (PostgreSQL text and jsonb cannot store it)"
    return None


def describe(exc: BaseException) -> str:
    """An exception as a sanitised one-line reason (the first line of a PostgreSQL message)."""
    first = str(exc).strip().splitlines()
    return sanitise(f"{type(exc).__name__}: {first[0] if first else ''}")


@dataclass(frozen=True, slots=True)
class Refusal:
    topic: str
    payload: bytes
    reason: str
    detail: str

    @classmethod
    def of(cls, topic: str, payload: bytes, reason: str, detail: str) -> Refusal:
        return cls(sanitise(topic, 1000), payload, reason, sanitise(detail))

    def log(self, level: int = logging.WARNING) -> None:
        log.log(
            level,
            "alert engine refused a message on %s: %s: %s (payload %d bytes: %r)",
            self.topic,
            self.reason,
            self.detail,
            len(self.payload),
            self.payload[:EXCERPT_BYTES],
        )


def record(conn: Conn, refusals: Sequence[Refusal], consumer: str, now: datetime) -> None:
    """Write the refusals (one statement; a redelivered message is recorded once)."""
    if not refusals:
        return
    conn.execute(
        INSERT,
        (
            now,
            consumer,
            [r.topic for r in refusals],
            [r.payload for r in refusals],
            [hashlib.sha256(r.payload).digest() for r in refusals],
            [r.reason for r in refusals],
            [r.detail for r in refusals],
        ),
    )
