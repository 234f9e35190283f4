"""API tokens: generated here, shown once, stored as their SHA-256 only (a leaked table grants nothing)."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import psycopg

from cloud.api.models import Role

PREFIX = "mft_"
TOKEN_BYTES = 32

INSERT = (
    "insert into api_tokens (token_sha256, name, role) values (%s, %s, %s) "
    "returning id, name, role, created_at, revoked_at"
)
LOOKUP = "select id, name, role from api_tokens where token_sha256 = %s and revoked_at is null"
LIST = "select id, name, role, created_at, revoked_at from api_tokens order by id"
REVOKE = (
    "update api_tokens set revoked_at = coalesce(revoked_at, now()) where id = %s "
    "returning id, name, role, created_at, revoked_at"
)


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def create_sync(conn: psycopg.Connection[Any], name: str, role: Role) -> tuple[str, int]:
    """Mint a token with a plain connection (the CLI); returns (token, id). Commits."""
    token = new_token()
    row = conn.execute(INSERT, (digest(token), name, role.value)).fetchone()
    conn.commit()
    assert row is not None
    return token, int(row[0])
