"""The uplink consumer of ingest and the alert engine: cloud.runtime's manual-ack consumer on the shared
filters of a group (one per uplink kind asked for, or one for every uplink). The measurements behind it
are in cloud/runtime/consumer.py."""

from __future__ import annotations

from collections.abc import Sequence

from cloud.runtime.consumer import AckToken, OnMessage
from cloud.runtime.consumer import Consumer as _RuntimeConsumer
from contract import topics

__all__ = ["AckToken", "Consumer", "OnMessage"]


def uplink_filters(group: str, kinds: Sequence[topics.Uplink] | None) -> tuple[list[str], list[str]]:
    """(the group's shared filters for `kinds` or every uplink, the other filters a session may hold).

    The stale ones include the group's share of the alert feed (topics.COMMITTED_FEED): an engine that ran
    with MICROFLEET_ALERT_FEED=committed and comes back in uplinks mode under the same client id would
    otherwise keep receiving ingest's batches in its persisted session (and ingest keep feeding it)."""
    wanted = (
        [topics.shared(group, topics.uplink_filter(k)) for k in kinds]
        if kinds
        else [topics.shared(group, topics.uplink_filter())]
    )
    every = [topics.uplink_filter(), *(topics.uplink_filter(k) for k in topics.Uplink), topics.COMMITTED_FEED]
    stale = [topics.shared(group, f) for f in every if topics.shared(group, f) not in wanted]
    return wanted, stale


class Consumer(_RuntimeConsumer):
    def __init__(
        self,
        *,
        mqtt_url: str,
        client_id: str,
        group: str,
        on_message: OnMessage,
        receive_maximum: int = 8000,
        session_expiry_s: int = 7 * 24 * 3600,
        keepalive_s: int = 30,
        kinds: Sequence[topics.Uplink] | None = None,
        ca_file: str | None = None,
    ) -> None:
        """`kinds`: the uplink kinds to receive (one shared filter each), or every uplink (one filter)."""
        filters, stale = uplink_filters(group, kinds)
        super().__init__(
            mqtt_url=mqtt_url,
            client_id=client_id,
            filters=filters,
            stale=stale,
            on_message=on_message,
            receive_maximum=receive_maximum,
            session_expiry_s=session_expiry_s,
            keepalive_s=keepalive_s,
            ca_file=ca_file,
        )
