"""Download with resume, verification and installation of one artifact (the I/O of the update).

The download appends to `ota/<job>.part` and asks for the rest with `Range: bytes=<have>-`: a cut
connection, a stalled server (no byte for `stall_timeout_s`) or a restart of the agent continues where it
stopped. A server that answers 200 to a range request sends the whole file again: the part is restarted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx

from contract.ota import FirmwareManifest

CHUNK = 64 * 1024


class DownloadError(Exception):
    """The download did not complete; `retryable` says whether trying again can help."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


async def download(
    http: httpx.AsyncClient,
    url: str,
    part: Path,
    size: int,
    on_progress: Callable[[int], None],
) -> None:
    """Fetch `url` into `part` until it holds `size` bytes. Raises DownloadError."""
    have = _size(part)
    if have > size:
        _drop(part)
        have = 0
    if have == size:
        return
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        async with http.stream("GET", url, headers=headers) as response:
            if response.status_code == 416:
                _drop(part)
                raise DownloadError("the server refused the range: starting over", retryable=True)
            if response.status_code == 404:
                raise DownloadError(f"artifact not found at {url}", retryable=False)
            if response.status_code >= 500 or response.status_code == 429:
                raise DownloadError(f"server error {response.status_code} at {url}", retryable=True)
            if response.status_code not in (200, 206):
                raise DownloadError(f"unexpected HTTP {response.status_code} at {url}", retryable=False)
            mode = "ab" if response.status_code == 206 else "wb"
            if mode == "wb":
                have = 0
            with open(part, mode) as f:  # noqa: ASYNC230 - local 64 KiB appends, not worth a thread hop
                async for chunk in response.aiter_bytes():
                    f.write(chunk)
                    have += len(chunk)
                    if have > size:
                        raise DownloadError(
                            f"the server sent more than the {size} bytes declared", retryable=True
                        )
                    on_progress(have)
                f.flush()
    except httpx.HTTPError as exc:
        raise DownloadError(
            f"download cut at {have} of {size} bytes: {type(exc).__name__} {exc}", retryable=True
        ) from exc
    if have < size:
        raise DownloadError(f"download ended at {have} of {size} bytes", retryable=True)


def _size(part: Path) -> int:
    return part.stat().st_size if part.exists() else 0


def _drop(part: Path) -> None:
    part.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            h.update(block)
    return h.hexdigest()


def verify_artifact(part: Path, manifest: FirmwareManifest) -> str | None:
    """Why the downloaded file is not the signed artifact (None when it is)."""
    size = part.stat().st_size if part.exists() else 0
    if size != manifest.size:
        return f"artifact has {size} bytes, the signed manifest says {manifest.size}"
    digest = sha256_file(part)
    if digest != manifest.sha256:
        return (
            f"artifact sha256 {digest[:16]}... does not match the signed manifest's {manifest.sha256[:16]}...: "
            "tampered or corrupted, refused"
        )
    return None
