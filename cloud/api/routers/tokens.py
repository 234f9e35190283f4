"""API tokens (admin): list, create (the token is in the answer only), revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status
from psycopg.rows import dict_row

from cloud.api import tokens
from cloud.api.deps import AUTH_ERRORS, Admin, Conn, problems
from cloud.api.models import NewToken, Token, TokenIn

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=AUTH_ERRORS)


@router.get("", summary="Every token (never the token itself), revoked ones included")
async def list_tokens(conn: Conn, _who: Admin) -> list[Token]:
    cur = conn.cursor(row_factory=dict_row)
    return [Token(**r) for r in await (await cur.execute(tokens.LIST_FULL)).fetchall()]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a token; it is shown in this answer only",
    responses=problems(400),
)
async def create_token(conn: Conn, _who: Admin, body: TokenIn) -> NewToken:
    secret = tokens.new_token()
    cur = conn.cursor(row_factory=dict_row)
    row = await (
        await cur.execute(
            tokens.INSERT, (tokens.digest(secret), body.name, body.role.value, body.health_data)
        )
    ).fetchone()
    assert row is not None
    return NewToken(**row, token=secret)


@router.delete(
    "/{token_id}", summary="Revoke a token: it is refused from the next request on", responses=problems(404)
)
async def revoke_token(conn: Conn, _who: Admin, token_id: Annotated[int, Path(ge=1, le=2**63 - 1)]) -> Token:
    cur = conn.cursor(row_factory=dict_row)
    row = await (await cur.execute(tokens.REVOKE, (token_id,))).fetchone()
    if row is None:
        raise HTTPException(404, f"no token {token_id}")
    return Token(**row)
