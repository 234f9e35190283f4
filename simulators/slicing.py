"""Which device indices a replica of a scaled-out simulator runs (pure).

`docker compose up --scale simulator=N` starts N identical containers; each learns its replica number
(1..N, from the container name `<project>-simulator-<n>` or MICROFLEET_SIM_REPLICA) and takes its own
contiguous slice of 0..devices-1, so device ids never collide and together the replicas run every device
exactly once.
"""

from __future__ import annotations

import re

_REPLICA_NAME = re.compile(r"[-_]simulator[-_](\d+)$")


def replica_slice(devices: int, replicas: int, replica: int) -> range:
    """Device indices of `replica` (1-based) among `replicas`; sizes differ by at most one."""
    if devices < 0 or replicas < 1:
        raise ValueError("need devices >= 0 and replicas >= 1")
    if not 1 <= replica <= replicas:
        raise ValueError(f"replica must be within 1..{replicas}, got {replica}")
    base, extra = divmod(devices, replicas)
    start = (replica - 1) * base + min(replica - 1, extra)
    return range(start, start + base + (1 if replica <= extra else 0))


def replica_number(container_name: str) -> int:
    """The replica number compose gives a scaled service's container: `microfleet-simulator-3` -> 3."""
    m = _REPLICA_NAME.search(container_name.strip("/"))
    if m is None:
        raise ValueError(
            f"{container_name!r} is not a compose replica name (<project>-simulator-<n>): "
            "set MICROFLEET_SIM_REPLICA instead"
        )
    return int(m.group(1))
