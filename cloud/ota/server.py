"""The artifact server: `GET /artifacts/{name}` with HTTP range requests (206 Partial Content), so a
device resumes a cut download. Starlette's FileResponse implements Range (single and multiple ranges,
416 for an unsatisfiable one) and sends `Accept-Ranges: bytes`, `ETag` and `Last-Modified`.

No authentication on purpose: an artifact is useless without its signed manifest, and its integrity is
checked against that manifest on the device. Put a CDN in front at scale: the URL is stable per file.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

from cloud.api.deps import problems
from cloud.ota.artifacts import artifact_dir

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")


def artifact_router(directory: Path | None = None) -> APIRouter:
    router = APIRouter(tags=["ota"])

    @router.get(
        "/artifacts/{name}",
        response_class=FileResponse,
        summary="Download a firmware artifact (Range requests resume a cut download)",
        responses={
            206: {"description": "The requested byte range", "content": {"application/octet-stream": {}}},
            **problems(404, 416),
        },
    )
    async def get_artifact(name: str) -> FileResponse:
        base = directory if directory is not None else artifact_dir()
        path = base / name
        if not _NAME.match(name) or not path.is_file():
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no artifact {name!r}")
        return FileResponse(path, media_type="application/octet-stream")

    return router


router = artifact_router()
