"""API tokens: generated here, shown once, stored as their SHA-256 only (a leaked table grants nothing).

A token has a role (viewer < operator < admin) and, separately, the health-data grant (`health_data`):
only a token with the grant reads a device's contraindication flags and notes, whatever its role
(migration 0301; every such read is audited in `health_data_reads`, cloud/api/deps.py)."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import psycopg

from cloud.api.models import Role

PREFIX = "mft_"
TOKEN_BYTES = 32

COLUMNS = "id, name, role, health_data, created_at, revoked_at"
INSERT = (
    "insert into api_tokens (token_sha256, name, role, health_data) values (%s, %s, %s, %s) "
    f"returning {COLUMNS}"
)
LOOKUP = "select id, name, role, health_data from api_tokens where token_sha256 = %s and revoked_at is null"
LIST = "select id, name, role, created_at, revoked_at from api_tokens order by id"  # the CLI's table
LIST_FULL = f"select {COLUMNS} from api_tokens order by id"
REVOKE = f"update api_tokens set revoked_at = coalesce(revoked_at, now()) where id = %s returning {COLUMNS}"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def create_sync(
    conn: psycopg.Connection[Any], name: str, role: Role, health_data: bool = False
) -> tuple[str, int]:
    """Mint a token with a plain connection (the CLI); returns (token, id). Commits."""
    token = new_token()
    row = conn.execute(INSERT, (digest(token), name, role.value, health_data)).fetchone()
    conn.commit()
    assert row is not None
    return token, int(row[0])
