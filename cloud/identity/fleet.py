"""Fleet groups and device filters, shared by `GET /devices`, the tag routes and `microfleet devices`.

Tags live in ONE place: `devices.tags` (text[], GIN-indexed; 0400_protocols.sql). Rollouts
(`--tag`: any of the tags) and protocol pushes (`--to-tag`) select devices by that column, and the tag
commands and routes here write it; there is no other tag table. Filters narrow: every filter given must
hold, and several tags mean the device has all of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,63}$"
_TAG = re.compile(TAG_PATTERN)

ADD_TAGS = """
update devices set tags = array(select distinct t from unnest(tags || %s::text[]) t order by t)
where device_id = %s returning tags
"""
REMOVE_TAGS = """
update devices set tags = array(select t from unnest(tags) t where t <> all(%s::text[]) order by t)
where device_id = %s returning tags
"""
GET_TAGS = "select tags from devices where device_id = %s"
TAG_COUNTS = """
select t as tag, count(*) as devices from devices, unnest(tags) t group by t order by t
"""

FILTERS = """
    (%(model)s::text is null or d.model = %(model)s)
and (%(fw)s::text is null or d.fw_version = %(fw)s)
and (%(state)s::text is null or d.state = %(state)s)
and (cardinality(%(tags)s::text[]) = 0 or d.tags @> %(tags)s::text[])
and (%(protocol)s::text is null or d.protocol_id = %(protocol)s)
and (%(protocol_version)s::int is null or d.protocol_version = %(protocol_version)s)
and (%(seen_since)s::timestamptz is null or d.last_seen >= %(seen_since)s)
and (%(seen_before)s::timestamptz is null or d.last_seen < %(seen_before)s)
and (%(battery_below)s::real is null or d.battery_pct < %(battery_below)s)
and (%(after)s::text is null or d.device_id > %(after)s)
"""


class TagError(ValueError):
    """A tag that is not 1-64 characters of letters, digits and `_ . : = -` starting with a letter or digit."""


def check_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise TagError(
            f"tag {tag!r}: use 1-64 letters, digits and _ . : = - (starting with a letter or digit)"
        )
    return tag


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    model: str | None = None
    fw_version: str | None = None
    state: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)  # all of them
    protocol_id: str | None = None
    protocol_version: int | None = None
    seen_since: datetime | None = None  # last seen at or after
    seen_before: datetime | None = None  # last seen before (never seen: excluded)
    battery_below: float | None = None
    after: str | None = None  # keyset: the last device id of the previous page

    def params(self, limit: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "fw": self.fw_version,
            "state": self.state,
            "tags": list(self.tags),
            "protocol": self.protocol_id,
            "protocol_version": self.protocol_version,
            "seen_since": self.seen_since,
            "seen_before": self.seen_before,
            "battery_below": self.battery_below,
            "after": self.after,
            "limit": limit,
        }
