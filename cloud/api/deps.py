"""Dependencies shared by the routers: the connection pool, and bearer-token authentication with roles.

Roles are ordered viewer < operator < admin: a route declares the least role it needs with
`Depends(require(Role.OPERATOR))`; a missing or unknown token is a 401, a role too low a 403.

Health data (a device's contraindication flags and notes) is a separate grant, `health_data` on the
token, implied by no role, admin included: least privilege, and an admin who wants it mints a token
with the grant (visible in the token list). `HealthReader` lets through tokens with the grant (403
otherwise); every read of a device's health data is recorded with `record_health_read` (who: the token
id and name, when, which device, which route) in `health_data_reads`, in the request's connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from cloud.api import tokens
from cloud.api.models import Problem, Role

bearer = HTTPBearer(
    auto_error=False,
    description="An API token made with `microfleet api token create` or `POST /tokens`.",
)


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: int
    name: str
    role: Role
    health_data: bool = False


def get_pool(request: Request) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = request.app.state.pool
    return pool


async def get_conn(
    pool: Annotated[AsyncConnectionPool, Depends(get_pool)],
) -> AsyncIterator[AsyncConnection[Any]]:
    """One pooled autocommit connection for the request (writes open `conn.transaction()`)."""
    async with pool.connection() as conn:
        yield conn


Conn = Annotated[AsyncConnection[Any], Depends(get_conn)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


async def authenticate(
    conn: Conn, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    if credentials is None:
        raise _unauthorized(
            "missing API token: send `Authorization: Bearer <token>` (create one with `microfleet api token create`)"
        )
    cur = await conn.execute(tokens.LOOKUP, (tokens.digest(credentials.credentials),))
    row = await cur.fetchone()
    if row is None:
        raise _unauthorized("unknown or revoked API token: ask an admin for a new one")
    return Principal(int(row[0]), str(row[1]), Role(row[2]), bool(row[3]))


def require(least: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through tokens of role `least` or higher."""

    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if principal.role.rank < least.rank:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this needs the {least.value} role; token {principal.name!r} has {principal.role.value}",
            )
        return principal

    return check


async def require_health(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """Tokens with the health-data grant (any role)."""
    if not principal.health_data:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"health data needs a token with the health_data grant; token {principal.name!r} has none "
            "(an admin creates one: `microfleet api token create --health-data`)",
        )
    return principal


HEALTH_READ = "insert into health_data_reads (token_id, token_name, device_id, route) values (%s, %s, %s, %s)"


async def record_health_read(conn: AsyncConnection[Any], who: Principal, device_id: str, route: str) -> None:
    """Audit one read of a device's health data (autocommit: stored even if the answer fails later)."""
    await conn.execute(HEALTH_READ, (who.token_id, who.name, device_id, route))


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
HealthReader = Annotated[Principal, Depends(require_health)]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error codes whose body is a Problem ({"detail": "..."}); 400 is a body that
    is not JSON at all (FastAPI's answer before validation)."""
    return {code: {"model": Problem} for code in codes}


AUTH_ERRORS = problems(401, 403, 503)
