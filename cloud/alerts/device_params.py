"""Each device's rule parameters, from the database: its model, the protocol it runs (the version it
reported, `devices.protocol_id/protocol_version`) and its own overrides (`alert_rule_overrides`).

`PARAMS_INPUTS` is one query for a batch of devices (the engine sends it in its read pipeline); the
rows are turned into `RuleParams` by `params_of`, cached on the exact texts (a fleet has few distinct
models x protocols x overrides). A layer that no longer parses (a stored override that a newer release
renamed) is logged and skipped, never allowed to stop the engine: the device keeps the layers below it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import msgspec
import psycopg

from cloud.alerts.params import ParamsError, RuleParams, params_for_device
from contract.protocol import TreatmentProtocol

log = logging.getLogger(__name__)
Row = tuple[str, str | None, str | None, str | None]  # device_id, model, protocol document, overrides

PARAMS_INPUTS = """
select i.d, d.model, p.document::text, o.overrides::text
from jsonb_array_elements_text(%s::jsonb) as i(d)
left join devices d on d.device_id = i.d
left join protocols p on p.protocol_id = d.protocol_id and p.version = d.protocol_version
left join alert_rule_overrides o on o.device_id = i.d
"""
_protocol = msgspec.json.Decoder(TreatmentProtocol)
_overrides = msgspec.json.Decoder(dict[str, dict[str, Any]])


def protocol_of(protocol_json: str | None) -> TreatmentProtocol | None:
    """The stored protocol document, or None (no protocol reported, or a document that no longer parses:
    logged, and the device keeps its model's parameters)."""
    try:
        return _protocol.decode(protocol_json) if protocol_json else None
    except msgspec.DecodeError as exc:
        log.warning("a protocol document is not usable for alert parameters: %s", exc)
        return None


@lru_cache(maxsize=4096)
def params_of(model: str, protocol_json: str | None = None, overrides_json: str | None = None) -> RuleParams:
    protocol = protocol_of(protocol_json)
    overrides: dict[str, dict[str, Any]] | None = None
    try:
        overrides = _overrides.decode(overrides_json) if overrides_json else None
    except msgspec.DecodeError as exc:
        log.warning("device rule overrides %s are not usable: %s", overrides_json, exc)
    for layers in ((protocol, overrides), (protocol, None)):  # drop a layer that no longer applies
        try:
            return params_for_device(model, *layers)
        except ParamsError as exc:
            log.warning("alert parameters of a %r device: %s; that layer is skipped", model, exc)
    return params_for_device(model)


def params_of_rows(rows: Iterable[Row]) -> dict[str, RuleParams]:
    """Per device id. A device ingest has not registered yet has no model: the at-home defaults."""
    return {d: params_of(model or "", doc, ov) for d, model, doc, ov in rows}


def load_params(conn: psycopg.Connection[Any], device_ids: Iterable[str]) -> dict[str, RuleParams]:
    """The parameters of these devices (one query), for callers outside the engine's pipeline."""
    ids = sorted(set(device_ids))
    rows = conn.execute(PARAMS_INPUTS, (msgspec.json.encode(ids).decode(),)).fetchall()
    return params_of_rows(rows)
