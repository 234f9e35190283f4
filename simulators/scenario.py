"""Scenario files (TOML): which devices, which persona mix, how much simulated time, how fast.

    name = "sixty-days"
    seed = 7
    devices = 200
    days = 60                 # simulated days of use
    speed = 0                 # 0: as fast as the CPU allows (compressed); 1: real time (load)
    start = "2025-01-06"      # optional, local midnight of day 0 (UTC); default: `days` before today
    id_prefix = "sim"
    samples_per_batch = 600   # edge setting for every agent
    trusted_keys = "keys.json"  # optional: the signing keys every agent trusts (relative to this file);
                              # MICROFLEET_EDGE_TRUSTED_KEYS / `microfleet sim --trusted-keys` win over it

    [personas]                # weights (any positive numbers)
    compliant_starter = 4
    over_user = 1

    [overrides.clinic_esthetician]   # optional: persona fields changed for this scenario
    active_days = 5

`load_scenario(path)` / `parse_scenario(text)` return a frozen Scenario or raise ScenarioError naming the
key that is wrong and what is allowed.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from simulators.persona import PERSONAS, Persona

_KEYS = {"name", "seed", "devices", "days", "speed", "start", "id_prefix", "samples_per_batch", "personas"}
_KEYS |= {"overrides", "trusted_keys"}
_OVERRIDABLE = {
    f.name: f.type for f in dataclasses.fields(Persona) if f.name not in {"name", "expected", "zones"}
}


class ScenarioError(ValueError):
    """The scenario file is not valid; the message names the key and what is allowed."""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str = "scenario"
    seed: int = 0
    devices: int = 10
    days: float = 1.0
    speed: float = 0.0
    start: datetime | None = None
    id_prefix: str = "sim"
    samples_per_batch: int = 10
    weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PERSONAS, 1.0))
    personas: dict[str, Persona] = field(default_factory=lambda: dict(PERSONAS))
    trusted_keys: Path | None = None  # JSON of the Ed25519 keys the agents trust (None: none, all rejected)

    def start_at(self, today: date | None = None) -> datetime:
        """Midnight (UTC) of simulated day 0: `start`, or `days` before today so the run ends now."""
        if self.start is not None:
            return self.start
        d = today or datetime.now(UTC).date()
        return datetime(d.year, d.month, d.day, tzinfo=UTC) - timedelta(days=self.days)


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ScenarioError(message)


def _number(raw: dict[str, Any], key: str, kind: type, default: Any, *, low: float | None = None) -> Any:
    value = raw.get(key, default)
    ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
    _need(ok and not isinstance(value, bool), f"`{key}` must be a {kind.__name__}, got {value!r}")
    if low is not None:
        _need(value >= low, f"`{key}` must be >= {low}, got {value}")
    return kind(value)


def _persona_overrides(name: str, raw: object, base: Persona) -> Persona:
    _need(isinstance(raw, dict), f"[overrides.{name}] must be a table")
    assert isinstance(raw, dict)
    changes: dict[str, object] = {}
    for key, value in raw.items():
        _need(
            key in _OVERRIDABLE,
            f"[overrides.{name}] has unknown field `{key}`: choose from {', '.join(sorted(_OVERRIDABLE))}",
        )
        current = getattr(base, key)
        if isinstance(current, tuple):
            _need(isinstance(value, list), f"[overrides.{name}] `{key}` must be a list like {list(current)}")
            value = tuple(value)
        elif isinstance(current, bool) or (
            current is not None and not isinstance(current, int | float | str)
        ):
            raise ScenarioError(f"[overrides.{name}] `{key}` cannot be overridden")
        elif isinstance(current, int | float) and not isinstance(value, int | float):
            raise ScenarioError(f"[overrides.{name}] `{key}` must be a number, got {value!r}")
        changes[key] = value
    try:
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"[overrides.{name}]: {exc}") from None


def parse_scenario(text: str, *, source: str = "scenario", base_dir: Path | None = None) -> Scenario:
    """`base_dir`: where a relative `trusted_keys` path is resolved (the scenario file's folder)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - _KEYS)
    _need(not unknown, f"{source}: unknown key(s) {unknown}; allowed: {', '.join(sorted(_KEYS))}")
    weights_raw = raw.get("personas", dict.fromkeys(PERSONAS, 1))
    _need(isinstance(weights_raw, dict) and bool(weights_raw), "[personas] must map persona names to weights")
    weights: dict[str, float] = {}
    for name, w in weights_raw.items():
        _need(name in PERSONAS, f"[personas] unknown persona `{name}`: choose from {', '.join(PERSONAS)}")
        _need(
            isinstance(w, int | float) and not isinstance(w, bool) and w >= 0,
            f"[personas] `{name}` weight must be a number >= 0, got {w!r}",
        )
        weights[name] = float(w)
    _need(sum(weights.values()) > 0, "[personas] needs at least one weight > 0")
    overrides = raw.get("overrides", {})
    _need(isinstance(overrides, dict), "[overrides] must be a table of persona tables")
    personas = dict(PERSONAS)
    for name, table in overrides.items():
        _need(name in PERSONAS, f"[overrides] unknown persona `{name}`: choose from {', '.join(PERSONAS)}")
        personas[name] = _persona_overrides(name, table, PERSONAS[name])
    start = raw.get("start")
    if start is not None:
        if isinstance(start, date) and not isinstance(start, datetime):
            start = datetime(start.year, start.month, start.day, tzinfo=UTC)
        _need(isinstance(start, datetime), f"`start` must be a date or a datetime, got {start!r}")
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
    name = raw.get("name", "scenario")
    prefix = raw.get("id_prefix", "sim")
    _need(isinstance(name, str) and isinstance(prefix, str), "`name` and `id_prefix` must be strings")
    keys = raw.get("trusted_keys")
    _need(keys is None or isinstance(keys, str), "`trusted_keys` must be a path (a string)")
    trusted = None if keys is None else (base_dir or Path.cwd()) / Path(str(keys)).expanduser()
    spb = _number(raw, "samples_per_batch", int, 10, low=1)
    _need(spb <= 600, f"`samples_per_batch` must be <= 600, got {spb}")
    return Scenario(
        name=name,
        seed=_number(raw, "seed", int, 0),
        devices=_number(raw, "devices", int, 10, low=1),
        days=_number(raw, "days", float, 1.0, low=0.0),
        speed=_number(raw, "speed", float, 0.0, low=0.0),
        start=start,
        id_prefix=prefix,
        samples_per_batch=spb,
        weights=weights,
        personas=personas,
        trusted_keys=trusted,
    )


def load_scenario(path: Path) -> Scenario:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
    return parse_scenario(text, source=str(path), base_dir=path.parent)
