"""Broker credentials of a device (admin): provision (the secret is returned once, never stored here) and
revoke (the device is disconnected at once). Talks to the broker's dynamic-security plugin as its admin
(`MICROFLEET_BROKER_ADMIN_URL=mqtt://admin:<password>@host:port`)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request, Response, status
from starlette.concurrency import run_in_threadpool

from cloud.api.deps import AUTH_ERRORS, Admin, Conn, problems
from cloud.api.models import DeviceCredentials
from cloud.api.routers.devices import DevicePath
from cloud.config import CloudConfig
from cloud.identity import provision
from cloud.identity.dynsec import DynsecClient, DynsecError
from contract.mqtturl import parse_mqtt_url

log = logging.getLogger(__name__)

router = APIRouter(prefix="/devices", tags=["credentials"], responses=AUTH_ERRORS)
BROKER_TIMEOUT_S = 5.0


def admin_client(config: CloudConfig) -> DynsecClient:
    a = parse_mqtt_url(config.broker_admin_url)
    if not a.username or not a.password:
        raise HTTPException(
            503,
            "credential provisioning is not configured: set MICROFLEET_BROKER_ADMIN_URL="
            "mqtt://admin:<password>@host:port (the broker's dynamic-security admin)",
        )
    return DynsecClient(config.broker_admin_url, a.username, a.password, timeout_s=BROKER_TIMEOUT_S)


def _provision(config: CloudConfig, device_id: str) -> provision.Credentials:
    with admin_client(config) as client:
        return provision.provision_device(client, device_id, config.device_mqtt_url)


def _revoke(config: CloudConfig, device_id: str) -> None:
    with admin_client(config) as client:
        provision.revoke_device(client, device_id)


def _broker_error(exc: Exception, device_id: str) -> HTTPException:
    text = str(exc)
    if isinstance(exc, DynsecError) and "already exists" in text:
        return HTTPException(
            409, f"{device_id!r} already has credentials; DELETE them first to issue new ones"
        )
    if isinstance(exc, DynsecError) and "not found" in text:
        return HTTPException(404, f"{device_id!r} has no credentials on the broker")
    log.warning("broker refused or unreachable for %s: %s", device_id, text)
    return HTTPException(503, f"the broker could not do it: {text}; check that it runs and retry")


async def _require_device(conn: Conn, device_id: str) -> None:
    row = await (await conn.execute("select 1 from devices where device_id = %s", (device_id,))).fetchone()
    if row is None:
        raise HTTPException(404, f"no device {device_id!r}: register it with POST /devices first")


@router.post(
    "/{device_id}/credentials",
    status_code=status.HTTP_201_CREATED,
    summary="Create the device's broker identity; the password is in this answer only",
    responses=problems(404, 409),
)
async def create_credentials(
    request: Request, response: Response, conn: Conn, _who: Admin, device_id: DevicePath
) -> DeviceCredentials:
    await _require_device(conn, device_id)
    config: CloudConfig = request.app.state.config
    try:
        creds = await run_in_threadpool(_provision, config, device_id)
    except (DynsecError, OSError, TimeoutError) as exc:
        raise _broker_error(exc, device_id) from None
    response.headers["Cache-Control"] = "no-store"
    return DeviceCredentials(
        device_id=device_id,
        username=creds.username,
        password=creds.password,
        mqtt_url=creds.url_with_secret(),
    )


@router.delete(
    "/{device_id}/credentials",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete the device's broker identity: it is disconnected and can no longer connect",
    responses=problems(404),
)
async def delete_credentials(request: Request, _who: Admin, device_id: DevicePath) -> None:
    try:
        await run_in_threadpool(_revoke, request.app.state.config, device_id)
    except (DynsecError, OSError, TimeoutError) as exc:
        raise _broker_error(exc, device_id) from None
