"""Devices: list (filters: tag, model, firmware, protocol, state, last seen, battery), one device with its
state and profile, registration, and the profile with its contraindication flags."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import AwareDatetime, StringConstraints

from cloud.api.deps import (
    AUTH_ERRORS,
    Admin,
    Conn,
    HealthReader,
    Principal,
    Viewer,
    problems,
    record_health_read,
)
from cloud.api.models import (
    DEVICE_ID_REGEX,
    NO_NUL,
    Contraindications,
    Device,
    DeviceDetail,
    DevicePage,
    DeviceRegistration,
    DeviceState,
    Profile,
    ProfileIn,
)
from cloud.identity.fleet import FILTERS as FLEET_FILTERS
from cloud.identity.fleet import TAG_PATTERN, DeviceFilter

router = APIRouter(prefix="/devices", tags=["devices"], responses=AUTH_ERRORS)

DevicePath = Annotated[str, Path(pattern=DEVICE_ID_REGEX, max_length=64, description="device id")]
FLAGS = tuple(Contraindications.model_fields)
DEVICE_COLUMNS = (
    "device_id, model, hw_rev, fw_version, protocol_id, protocol_version, state, last_seen, last_seq, "
    "outbox_depth, outbox_dropped, battery_pct, tz_offset_min, first_seen, updated_at, tags"
)
_D = ", ".join(f"d.{c.strip()}" for c in DEVICE_COLUMNS.split(","))
SELECT_DEVICES = f"""
select {_D}, (p.device_id is not null) as registered
from devices d left join device_profiles p on p.device_id = d.device_id
where {FLEET_FILTERS}
order by d.device_id
limit %(limit)s
"""
SELECT_DEVICE = f"""
select {_D}, (p.device_id is not null) as registered
from devices d left join device_profiles p on p.device_id = d.device_id where d.device_id = %s
"""
PROFILE_COLUMNS = ("tz_name", "tz_offset_min", *FLAGS, "notes", "updated_by")
UPSERT_PROFILE = (
    f"insert into device_profiles (device_id, {', '.join(PROFILE_COLUMNS)}) "
    f"values (%(device_id)s, {', '.join(f'%({c})s' for c in PROFILE_COLUMNS)}) "
    "on conflict (device_id) do update set "
    + ", ".join(f"{c} = excluded.{c}" for c in PROFILE_COLUMNS)
    + ", updated_at = now() returning device_id"
)
INSERT_PROFILE = (
    UPSERT_PROFILE.split(" on conflict")[0] + " on conflict (device_id) do nothing returning device_id"
)
# Registration is the manufacturer's word on model and hardware; the time-zone offset the device itself
# reports (ingest) wins over the registered one.
UPSERT_DEVICE = """
insert into devices (device_id, model, hw_rev, tz_offset_min) values (%s, %s, %s, %s)
on conflict (device_id) do update set model = excluded.model,
    hw_rev = coalesce(excluded.hw_rev, devices.hw_rev),
    tz_offset_min = coalesce(devices.tz_offset_min, excluded.tz_offset_min)
"""


def tz_offset(profile: ProfileIn, now: datetime) -> int | None:
    """The explicit offset, else the zone's offset at `now` (DST included), else None."""
    if profile.tz_offset_min is not None or profile.tz is None:
        return profile.tz_offset_min
    offset = now.astimezone(ZoneInfo(profile.tz)).utcoffset()
    return None if offset is None else int(offset.total_seconds() // 60)


def profile_params(device_id: str, profile: ProfileIn, now: datetime, by: str) -> dict[str, Any]:
    flags = profile.contraindications.model_dump()
    return {
        "device_id": device_id,
        "tz_name": profile.tz,
        "tz_offset_min": tz_offset(profile, now),
        **flags,
        "notes": profile.notes,
        "updated_by": by,
    }


def profile_from_row(row: dict[str, Any]) -> Profile:
    return Profile(
        device_id=row["device_id"],
        tz=row["tz_name"],
        tz_offset_min=row["tz_offset_min"],
        contraindications=Contraindications(**{f: row[f] for f in FLAGS}),
        notes=row["notes"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        updated_by=row["updated_by"],
    )


async def read_profile(conn: AsyncConnection[Any], device_id: str) -> Profile | None:
    cur = conn.cursor(row_factory=dict_row)
    row = await (
        await cur.execute("select * from device_profiles where device_id = %s", (device_id,))
    ).fetchone()
    return None if row is None else profile_from_row(row)


def withheld(profile: Profile) -> Profile:
    """The profile without its health data (contraindications, notes): what a token without the grant sees."""
    return profile.model_copy(update={"contraindications": None, "notes": None, "health_data_withheld": True})


async def profile_for(
    conn: AsyncConnection[Any], who: Principal | None, device_id: str, route: str
) -> Profile | None:
    """The profile as `who` may see it: whole (and the read audited) with the health-data grant, else
    withheld. `who` None: withheld."""
    profile = await read_profile(conn, device_id)
    if profile is None:
        return None
    if who is None or not who.health_data:
        return withheld(profile)
    await record_health_read(conn, who, device_id, route)
    return profile


async def read_device(
    conn: AsyncConnection[Any], device_id: str, who: Principal | None = None, route: str = ""
) -> DeviceDetail:
    cur = conn.cursor(row_factory=dict_row)
    row = await (await cur.execute(SELECT_DEVICE, (device_id,))).fetchone()
    if row is None:
        raise HTTPException(404, f"no device {device_id!r}: register it with POST /devices")
    return DeviceDetail(**row, profile=await profile_for(conn, who, device_id, route))


@router.get(
    "",
    summary="List devices (keyset pages in device id order), filtered by tag, model, firmware, protocol, "
    "state, last seen and battery (every filter given must hold)",
)
async def list_devices(
    conn: Conn,
    _who: Viewer,
    model: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    fw_version: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    state: DeviceState | None = None,
    tag: Annotated[
        list[Annotated[str, StringConstraints(max_length=64, pattern=TAG_PATTERN)]] | None,
        Query(description="devices with this tag (repeat: all of them)"),
    ] = None,
    protocol_id: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    protocol_version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    seen_since: Annotated[AwareDatetime | None, Query(description="last seen at or after")] = None,
    seen_before: Annotated[
        AwareDatetime | None, Query(description="last seen before (devices never seen are left out)")
    ] = None,
    battery_below: Annotated[float | None, Query(gt=0, le=100, description="battery percent below")] = None,
    after: Annotated[
        str | None, Query(max_length=64, pattern=NO_NUL, description="last device id of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DevicePage:
    wanted = DeviceFilter(
        model, fw_version, state, tuple(tag or ()), protocol_id, protocol_version, seen_since, seen_before,
        battery_below, after,
    )  # fmt: skip
    params = wanted.params(limit + 1)
    cur = conn.cursor(row_factory=dict_row)
    rows = await (await cur.execute(SELECT_DEVICES, params)).fetchall()
    items = [Device(**r) for r in rows[:limit]]
    return DevicePage(items=items, next_after=items[-1].device_id if len(rows) > limit else None)


@router.get(
    "/{device_id}",
    summary="One device: its reported state and its profile (health data only with the health_data grant)",
    responses=problems(404),
)
async def get_device(conn: Conn, who: Viewer, device_id: DevicePath) -> DeviceDetail:
    return await read_device(conn, device_id, who, "GET /devices/{device_id}")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Register a device with its model, hardware revision, time zone and profile",
    responses=problems(400, 409),
)
async def register_device(
    request: Request, response: Response, conn: Conn, who: Admin, body: DeviceRegistration
) -> DeviceDetail:
    params = profile_params(body.device_id, body.profile, request.app.state.clock(), who.name)
    async with conn.transaction():
        created = await (await conn.execute(INSERT_PROFILE, params)).fetchone()
        if created is None:
            raise HTTPException(
                409,
                f"device {body.device_id!r} is already registered; change its profile with PUT .../profile",
            )
        await conn.execute(UPSERT_DEVICE, (body.device_id, body.model, body.hw_rev, params["tz_offset_min"]))
    response.headers["Location"] = f"/devices/{body.device_id}"
    return await read_device(conn, body.device_id, who, "POST /devices")


@router.get(
    "/{device_id}/profile",
    summary="The device's profile and contraindication flags (health data: needs the health_data grant; "
    "every read is audited)",
    responses=problems(404),
)
async def get_profile(conn: Conn, who: HealthReader, device_id: DevicePath) -> Profile:
    profile = await profile_for(conn, who, device_id, "GET /devices/{device_id}/profile")
    if profile is None:
        raise HTTPException(404, f"device {device_id!r} has no profile: register it with POST /devices")
    return profile


@router.put(
    "/{device_id}/profile",
    summary="Replace the profile (time zone, contraindication flags, notes) of a known device; the answer "
    "carries the health data only for a token with the health_data grant",
    responses=problems(400, 404),
)
async def put_profile(
    request: Request, conn: Conn, who: Admin, device_id: DevicePath, body: ProfileIn
) -> Profile:
    async with conn.transaction():
        known = await (
            await conn.execute("select 1 from devices where device_id = %s", (device_id,))
        ).fetchone()
        if known is None:
            raise HTTPException(404, f"no device {device_id!r}: register it with POST /devices")
        await conn.execute(
            UPSERT_PROFILE, profile_params(device_id, body, request.app.state.clock(), who.name)
        )
    profile = await profile_for(conn, who, device_id, "PUT /devices/{device_id}/profile")
    assert profile is not None
    return profile
