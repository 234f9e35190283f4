"""Every dashboard microfleet ships, and `build()`, which writes them as Grafana JSON files."""

from __future__ import annotations

from pathlib import Path

from cloud.dashboards import fleet, ota, platform, safety, usage
from cloud.dashboards.sdk import to_json
from cloud.dashboards.spec import DashboardSpec

DASHBOARDS: tuple[DashboardSpec, ...] = (
    fleet.DASHBOARD,
    usage.DASHBOARD,
    safety.DASHBOARD,
    ota.DASHBOARD,
    platform.DASHBOARD,
)

# In a source checkout: deploy/grafana/dashboards/, which Grafana's provisioning reads.
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"


def rendered() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{spec.uid}.json": to_json(spec) for spec in DASHBOARDS}


def build(out_dir: Path = DEFAULT_OUT) -> list[Path]:
    """Write every dashboard into `out_dir` (created if missing); files of dashboards we no longer ship
    (`mf-*.json`) are removed. Returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = rendered()
    for stale in out_dir.glob("mf-*.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = out_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written
