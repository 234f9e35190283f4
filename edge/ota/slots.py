"""The A/B slots on the device's file system: `slot_a/`, `slot_b/` and `boot.json` under the data folder.

Every write is atomic (write a temporary file, fsync, rename), so a power cut leaves either the old or the
new boot record, never half of one. `ota/` holds the download in progress (`<job>.part`), the stage of
the current job (`job.json`) and the ids of finished jobs (so a retained job is not run twice).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from edge.ota.planner import BootState, Slot

MAX_FINISHED = 50


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Slots:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        self.boot_path = data_dir / "boot.json"
        self.work = data_dir / "ota"
        self.work.mkdir(parents=True, exist_ok=True)

    # -- boot record ----------------------------------------------------------------------------------
    def load(self) -> BootState:
        try:
            raw = json.loads(self.boot_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return BootState()
        return BootState(
            active=raw["active"],
            pending=raw.get("pending"),
            attempts=int(raw.get("attempts", 0)),
            versions=dict(raw.get("versions", {})),
            codes={k: int(v) for k, v in raw.get("codes", {}).items()},
            floor=int(raw.get("floor", 0)),
            job_id=str(raw.get("job_id", "")),
            rollout_id=int(raw.get("rollout_id", 0)),
        )

    def save(self, state: BootState) -> None:
        doc = {
            "active": state.active,
            "pending": state.pending,
            "attempts": state.attempts,
            "versions": state.versions,
            "codes": state.codes,
            "floor": state.floor,
            "job_id": state.job_id,
            "rollout_id": state.rollout_id,
        }
        _atomic_write(self.boot_path, json.dumps(doc, sort_keys=True).encode())

    # -- slot contents ----------------------------------------------------------------------------------
    def slot_dir(self, slot: Slot) -> Path:
        return self.root / f"slot_{slot}"

    def write_slot(self, slot: Slot, artifact: Path, manifest_json: bytes) -> None:
        """Replace the slot's contents with the verified artifact (the inactive slot only)."""
        target = self.slot_dir(slot)
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        shutil.copyfile(artifact, target / "firmware.bin")
        _atomic_write(target / "manifest.json", manifest_json)
        with open(target / "firmware.bin", "rb") as f:
            os.fsync(f.fileno())

    # -- the job in progress -------------------------------------------------------------------------
    def part_path(self, job_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id)
        return self.work / f"{safe}.part"

    def part_bytes(self, job_id: str) -> int:
        p = self.part_path(job_id)
        return p.stat().st_size if p.exists() else 0

    def stage(self, job_id: str) -> str | None:
        try:
            raw = json.loads((self.work / "job.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return str(raw["stage"]) if raw.get("job_id") == job_id else None

    def set_stage(self, job_id: str, stage: str) -> None:
        _atomic_write(self.work / "job.json", json.dumps({"job_id": job_id, "stage": stage}).encode())

    def finished(self) -> frozenset[str]:
        try:
            return frozenset(json.loads((self.work / "finished.json").read_text(encoding="utf-8")))
        except FileNotFoundError:
            return frozenset()

    def finish(self, job_id: str) -> None:
        """Remember that `job_id` is done and drop its download."""
        try:
            done = list(json.loads((self.work / "finished.json").read_text(encoding="utf-8")))
        except FileNotFoundError:
            done = []
        if job_id not in done:
            done = [*done, job_id][-MAX_FINISHED:]
        _atomic_write(self.work / "finished.json", json.dumps(done).encode())
        self.part_path(job_id).unlink(missing_ok=True)
