"""Firmware releases: the artifact file under MICROFLEET_ARTIFACT_DIR, its SHA-256, the signed manifest
and the `firmware_releases` row. Also the checks run before a release is published to devices."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from psycopg import AsyncConnection

from contract.ota import FirmwareManifest, verify_manifest
from contract.signing import SignatureError, SignedDocument, SigningKey, TrustStore

DEFAULT_ARTIFACT_DIR = "./.microfleet-artifacts"


class ReleaseRefused(ValueError):
    """A release, rollout or rollback the cloud will not publish; the message says why and what to do."""


def artifact_dir(env: dict[str, str] | None = None) -> Path:
    e = os.environ if env is None else env
    return Path(e.get("MICROFLEET_ARTIFACT_DIR", DEFAULT_ARTIFACT_DIR))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Release:
    release_id: int
    manifest: FirmwareManifest
    signed: SignedDocument

    @property
    def version(self) -> str:
        return self.manifest.version


_COLS = "release_id, manifest"


def _release(row: tuple[Any, ...]) -> Release:
    signed = msgspec.convert(row[1], SignedDocument)
    payload = msgspec.json.decode(base64.b64decode(signed.payload), type=FirmwareManifest)
    return Release(int(row[0]), payload, signed)


def _inspect(source: Path) -> tuple[str, int]:
    if not source.is_file():
        raise ReleaseRefused(f"{source} is not a file")
    return sha256_of(source), source.stat().st_size


def _store_file(store: Path, source: Path, name: str) -> None:
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / (name + ".tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, store / name)


async def add_release(
    conn: AsyncConnection[Any],
    store: Path,
    source: Path,
    *,
    version: str,
    version_code: int,
    models: tuple[str, ...],
    hw_revs: tuple[str, ...] = (),
    min_battery_pct: float = 30.0,
    key: SigningKey,
    now: datetime,
    expected_sha256: str | None = None,
) -> Release:
    digest, size = await asyncio.to_thread(_inspect, source)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ReleaseRefused(
            f"{source} has sha256 {digest}, not the expected {expected_sha256}: the file is corrupted or "
            "tampered; fetch the build again"
        )
    cur = await conn.execute(
        "SELECT version, version_code FROM firmware_releases WHERE models && %s AND version_code > %s "
        "ORDER BY version_code DESC LIMIT 1",
        (list(models), version_code),
    )
    higher = await cur.fetchone()
    if higher is not None:
        raise ReleaseRefused(
            f"anti-rollback: version_code {version_code} is below {higher[1]} of release {higher[0]} for the "
            f"same models; devices that run {higher[0]} would refuse it. Use version_code >= {higher[1]}"
        )
    name = f"{version}-{digest[:12]}.bin"
    manifest = FirmwareManifest(
        version=version,
        version_code=version_code,
        models=models,
        hw_revs=hw_revs,
        sha256=digest,
        size=size,
        artifact=name,
        min_battery_pct=min_battery_pct,
        released_at=now,
    )
    signed = key.sign(manifest)
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO firmware_releases (version, version_code, models, hw_revs, sha256, size, artifact, "
            "min_battery_pct, manifest) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb) "
            "ON CONFLICT (version) DO NOTHING RETURNING release_id",
            (
                version,
                version_code,
                list(models),
                list(hw_revs),
                digest,
                manifest.size,
                name,
                min_battery_pct,
                msgspec.json.encode(signed).decode(),
            ),
        )
        row = await cur.fetchone()
        if row is None:
            raise ReleaseRefused(f"release {version} exists already: versions are immutable, use a new one")
        await asyncio.to_thread(_store_file, store, source, name)
    return Release(int(row[0]), manifest, signed)


async def get_release(conn: AsyncConnection[Any], version: str) -> Release:
    cur = await conn.execute(f"SELECT {_COLS} FROM firmware_releases WHERE version = %s", (version,))
    row = await cur.fetchone()
    if row is None:
        raise ReleaseRefused(f"no release {version!r}: add it with `microfleet ota release add`")
    return _release(row)


async def release_by_id(conn: AsyncConnection[Any], release_id: int) -> Release:
    cur = await conn.execute(f"SELECT {_COLS} FROM firmware_releases WHERE release_id = %s", (release_id,))
    row = await cur.fetchone()
    if row is None:
        raise ReleaseRefused(f"no release with id {release_id}")
    return _release(row)


async def list_releases(conn: AsyncConnection[Any]) -> list[Release]:
    cur = await conn.execute(f"SELECT {_COLS} FROM firmware_releases ORDER BY version_code, created_at")
    return [_release(r) for r in await cur.fetchall()]


def check_publishable(release: Release, store: Path, trust: TrustStore, now: datetime) -> None:
    """Refuse a release whose manifest does not verify with the keys devices trust, or whose artifact on
    disk is not the one the manifest describes (changed after `release add`)."""
    try:
        signed = verify_manifest(release.signed, trust, now)
    except SignatureError as exc:
        raise ReleaseRefused(
            f"release {release.version}: manifest refused ({exc.detail}); devices would refuse it too. "
            "Sign with a key in the devices' trust store (MICROFLEET_OTA_TRUSTED_KEYS) and add the release again"
        ) from None
    path = store / signed.artifact
    if not path.is_file():
        raise ReleaseRefused(f"release {release.version}: artifact {path} is missing from the artifact store")
    digest = sha256_of(path)
    if digest != signed.sha256 or path.stat().st_size != signed.size:
        raise ReleaseRefused(
            f"release {release.version}: artifact {path.name} has sha256 {digest[:16]}..., the signed manifest "
            f"says {signed.sha256[:16]}...: the file was tampered with or corrupted after `release add`; "
            "restore it or add a new release"
        )
