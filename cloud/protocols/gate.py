"""The safety gate before a protocol push: which target devices have an open blocking contraindication.

A device is blocked when the alert engine's gate says so (`safety_gates.blocked`, what the device itself
was told) OR when its profile declares a blocking contraindication under the device's C1 parameters
(`cloud.alerts.profile.contraindication_reasons`, the rule the engine applies). The second read covers
the seconds before the engine's poll sees a new profile, and a platform whose engine is not running: a
push never waits for the engine to be right.

The reasons are health data: callers report THAT a device is blocked, never why (the `health` grant of
the API reads the profile; cloud/api/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from cloud.alerts.device_params import PARAMS_INPUTS, params_of_rows
from cloud.alerts.inputs import local_day
from cloud.alerts.profile import contraindication_reasons
from cloud.alerts.store import PROFILE_SELECT, profile_of_row

if TYPE_CHECKING:
    from cloud.protocols.store import Conn

GATES = "select device_id, reasons from safety_gates where blocked and device_id = any(%s)"


def from_profiles(
    rows: Sequence[tuple[Any, ...]], params_rows: Sequence[Any], now: datetime
) -> dict[str, list[str]]:
    """Pure: the blocking reasons per device from `PROFILE_SELECT` rows and `PARAMS_INPUTS` rows."""
    params = params_of_rows(params_rows)
    out: dict[str, list[str]] = {}
    for row in rows:
        parsed = profile_of_row(row).profile
        c1 = params[parsed.device_id].c1
        if not c1.enabled:
            continue
        block, _advise = contraindication_reasons(
            parsed.contraindications, c1, local_day(now, parsed.tz_offset_min)
        )
        if block:
            out[parsed.device_id] = block
    return out


async def blocked(conn: Conn, device_ids: Sequence[str], now: datetime) -> dict[str, list[str]]:
    """The blocked devices among `device_ids`, with their (health-data) reasons."""
    ids = sorted(set(device_ids))
    if not ids:
        return {}
    found: dict[str, set[str]] = {}
    for device_id, reasons in await (await conn.execute(GATES, (ids,))).fetchall():
        found.setdefault(device_id, set()).update(reasons or ["safety gate"])
    cur = await conn.execute(PROFILE_SELECT + " where p.device_id = any(%s)", (ids,))
    profiles = await cur.fetchall()
    if profiles:
        with_profile = [r[0] for r in profiles]
        cur = await conn.execute(PARAMS_INPUTS, (msgspec.json.encode(with_profile).decode(),))
        for device_id, reasons in from_profiles(profiles, await cur.fetchall(), now).items():
            found.setdefault(device_id, set()).update(reasons)
    return {d: sorted(r) for d, r in sorted(found.items())}
