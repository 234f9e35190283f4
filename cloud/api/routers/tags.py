"""Fleet groups: a device's tags (read, add one, remove one) and every tag with its device count.

Tags are stored in devices.tags, the column rollouts (`tags`) and protocol pushes (`--to-tag`) target
(cloud/identity/fleet.py). Viewers read; operators tag. Adding a tag the device has, or removing one it
has not, changes nothing and answers 200 with the device's tags.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, Field

from cloud.api.deps import AUTH_ERRORS, Conn, Operator, Viewer, problems
from cloud.api.routers.devices import DevicePath
from cloud.identity.fleet import ADD_TAGS, GET_TAGS, REMOVE_TAGS, TAG_COUNTS, TAG_PATTERN

router = APIRouter(tags=["tags"], responses=AUTH_ERRORS)

TagPath = Annotated[str, Path(pattern=TAG_PATTERN, max_length=64, description="a tag, e.g. eu-west")]


class DeviceTags(BaseModel):
    device_id: str
    tags: list[str] = Field(description="sorted")


class TagCount(BaseModel):
    tag: str
    devices: int


def _tags(device_id: str, row: Any) -> DeviceTags:
    if row is None:
        raise HTTPException(404, f"no device {device_id!r}: it appears when it connects or is registered")
    return DeviceTags(device_id=device_id, tags=sorted(row[0]))


@router.get("/tags", summary="Every tag in use with how many devices have it")
async def tag_counts(conn: Conn, _who: Viewer) -> list[TagCount]:
    rows = await (await conn.execute(TAG_COUNTS)).fetchall()
    return [TagCount(tag=str(t), devices=int(n)) for t, n in rows]


@router.get("/devices/{device_id}/tags", summary="A device's tags", responses=problems(404))
async def get_tags(conn: Conn, _who: Viewer, device_id: DevicePath) -> DeviceTags:
    return _tags(device_id, await (await conn.execute(GET_TAGS, (device_id,))).fetchone())


@router.put("/devices/{device_id}/tags/{tag}", summary="Add a tag to a device", responses=problems(404))
async def add_tag(conn: Conn, _who: Operator, device_id: DevicePath, tag: TagPath) -> DeviceTags:
    return _tags(device_id, await (await conn.execute(ADD_TAGS, ([tag], device_id))).fetchone())


@router.delete(
    "/devices/{device_id}/tags/{tag}", summary="Remove a tag from a device", responses=problems(404)
)
async def remove_tag(conn: Conn, _who: Operator, device_id: DevicePath, tag: TagPath) -> DeviceTags:
    return _tags(device_id, await (await conn.execute(REMOVE_TAGS, ([tag], device_id))).fetchone())
