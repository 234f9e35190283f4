"""The NATS tier's identities: a store file, the rendered `auth.conf` include, and the reload.

On the Mosquitto tier the broker keeps the identities (dynamic security). nats-server reads users from its
configuration only, so here the identities live in a store file (JSON, mode 0600: names, roles and bcrypt
hashes, never a clear secret), `auth.conf` is rendered from it (cloud/identity/nats_render.py) with the
rights of cloud/identity/nats_policy.py, and every node is told to reload (SIGHUP, what `nats-server
--signal reload=<pid>` sends). A reload disconnects the clients of a removed user at once and refuses
them after (tested), so revoking = remove, render, reload.

Hashes: bcrypt at cost BCRYPT_COST. The server checks the hash on every connect, so the cost is paid per
connection of a reconnecting fleet; device secrets are 192-bit random tokens (no dictionary to slow down),
which is why the cost is low. A deployment's chosen service passwords get the same cost: choose long ones.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from cloud.identity import nats_policy
from cloud.identity.nats_render import NatsUser, render
from cloud.identity.provision import new_secret

BCRYPT_COST = 8
STORE_VERSION = 1


def hash_secret(secret: str) -> str:
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=BCRYPT_COST)).decode()


@dataclass
class NatsIdentities:
    """devices: device id -> hash; services: user name -> (role, hash)."""

    devices: dict[str, str] = field(default_factory=dict)
    services: dict[str, tuple[str, str]] = field(default_factory=dict)

    # -- changes (each returns the clear secret once, when it makes one) -------------------------------

    def provision_device(self, device_id: str) -> str:
        """A new secret for the device (a new device, or the old secret replaced)."""
        nats_policy.check_device_id(device_id)
        if device_id in self.services:
            raise nats_policy.NatsIdError(f"{device_id!r} is a service user")
        secret = new_secret()
        self.devices[device_id] = hash_secret(secret)
        return secret

    def revoke_device(self, device_id: str) -> bool:
        """True if it was there."""
        return self.devices.pop(device_id, None) is not None

    def provision_service(self, name: str, role: str, password: str | None = None) -> str:
        """A service user in `role`; `password` lets a deployment choose it, else one is generated."""
        nats_policy.service_permissions(role)  # raises on an unknown role
        if name in self.devices:
            raise nats_policy.NatsIdError(f"{name!r} is a device")
        secret = password or new_secret()
        self.services[name] = (role, hash_secret(secret))
        return secret

    def remove_service(self, name: str) -> bool:
        return self.services.pop(name, None) is not None

    # -- rendering ---------------------------------------------------------------------------------

    def users(self) -> list[NatsUser]:
        out = [NatsUser(d, h, nats_policy.device_permissions(d)) for d, h in self.devices.items()]
        out += [NatsUser(n, h, nats_policy.service_permissions(r)) for n, (r, h) in self.services.items()]
        return out

    def render(self) -> str:
        return render(self.users())

    # -- the store file ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> NatsIdentities:
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        if data.get("version") != STORE_VERSION:
            raise ValueError(f"{path}: unknown identity store version {data.get('version')!r}")
        return cls(
            devices=dict(data.get("devices", {})),
            services={n: (s["role"], s["hash"]) for n, s in data.get("services", {}).items()},
        )

    def save(self, path: Path) -> None:
        data = {
            "version": STORE_VERSION,
            "devices": dict(sorted(self.devices.items())),
            "services": {n: {"role": r, "hash": h} for n, (r, h) in sorted(self.services.items())},
        }
        write_private(path, json.dumps(data, indent=1) + "\n")


def write_private(path: Path, text: str) -> None:
    """Write atomically (a reload never reads half a file), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_auth(identities: NatsIdentities, auth_files: Iterable[Path]) -> None:
    """Render once and write it to every node's include (one file per node when they do not share one)."""
    text = identities.render()
    for path in auth_files:
        write_private(path, text)


def reload(pids: Iterable[int]) -> list[int]:
    """SIGHUP each node (`nats-server --signal reload=<pid>`); returns the pids that were not running."""
    gone: list[int] = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            gone.append(pid)
    return gone
