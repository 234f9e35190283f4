"""The device side of firmware updates against a real broker and a real HTTP artifact server: the happy
path (succeeded only after the reboot and the health check, birth with the new fw_version), refusals
(tampered artifact, wrong signature, downgrade below the anti-rollback floor), a failing health check
(automatic rollback), and power loss mid-download and mid-install (a real SIGKILL of a real process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contract.messages import OtaState, Status
from contract.ota import OtaAction
from contract.signing import SigningKey
from tests.edge.conftest import fast_config
from tests.edge.test_ota_support import (
    Device,
    artifact_server,
    final,
    install_job,
    make_release,
    publish_job,
    reports,
    running,
    states,
    trust_file,
)
from tests.support.services import ROOT, Mosquitto

KEY = SigningKey.generate()


async def test_update_succeeds_only_after_reboot_and_health_check(
    broker: Mosquitto, tmp_path: Path, collect: Any
) -> None:
    rel = make_release(tmp_path / "art", KEY, "1.1.0", 2)
    cfg = fast_config(tmp_path, broker.url, trusted_keys_file=trust_file(tmp_path / "keys.json", KEY))
    with artifact_server(tmp_path / "art") as (base, _):
        async with collect(broker.url, cfg.device_id) as c, running(Device(cfg)) as dev:
            await publish_job(broker.url, install_job(cfg.device_id, "job-1", rel, base))
            await c.wait_for(final(c, "job-1"))
            got = states(c, "job-1")
            assert got[0] is OtaState.QUEUED and got[-1] is OtaState.SUCCEEDED
            order = [
                OtaState.DOWNLOADING,
                OtaState.VERIFYING,
                OtaState.INSTALLING,
                OtaState.REBOOTING,
                OtaState.HEALTH_CHECK,
            ]
            assert [s for s in got if s in order][-5:] == order
            assert dev.boots == 2
            ok = next(r for r in reports(c) if r.state is OtaState.SUCCEEDED)
            assert ok.fw_version == "1.1.0"
            # the birth after the reboot announces the running slot's version
            await c.wait_for(lambda: any(s.fw_version == "1.1.0" for s in c.statuses()))
            boot = json.loads((cfg.data_dir / "boot.json").read_text())
            assert boot["active"] == "b" and boot["pending"] is None and boot["floor"] == 2
            assert (cfg.data_dir / "slot_b" / "firmware.bin").read_bytes() == rel.path.read_bytes()


@pytest.mark.parametrize("case", ["tampered", "wrong_signature", "downgrade"])
async def test_refusals_have_clear_reasons(
    broker: Mosquitto, tmp_path: Path, collect: Any, case: str
) -> None:
    keys = trust_file(tmp_path / "keys.json", KEY)
    cfg = fast_config(tmp_path, broker.url, trusted_keys_file=keys)
    art = tmp_path / "art"
    rel = make_release(art, SigningKey.generate() if case == "wrong_signature" else KEY, "2.0.0", 1)
    if case == "tampered":
        data = bytearray(rel.path.read_bytes())
        data[100] ^= 0xFF
        rel.path.write_bytes(bytes(data))
    if case == "downgrade":
        cfg.data_dir.mkdir(parents=True)
        (cfg.data_dir / "boot.json").write_text(
            json.dumps({"active": "a", "floor": 5, "versions": {"a": "3.0.0"}})
        )
    with artifact_server(art) as (base, _):
        async with collect(broker.url, cfg.device_id) as c, running(Device(cfg)) as dev:
            await publish_job(broker.url, install_job(cfg.device_id, "job-x", rel, base))
            await c.wait_for(final(c, "job-x"))
            failed = [r for r in reports(c) if r.job_id == "job-x"][-1]
            assert failed.state is OtaState.FAILED and not failed.retryable
            expected = {
                "tampered": "does not match the signed manifest",
                "wrong_signature": "manifest refused: signature: unknown key",
                "downgrade": "anti-rollback: firmware 2.0.0 has version_code 1, below the device's floor 5",
            }[case]
            assert expected in failed.reason, failed.reason
            assert dev.boots == 1  # nothing was installed
            assert not (cfg.data_dir / "slot_b").exists()


async def test_failing_health_check_rolls_back_by_itself(
    broker: Mosquitto, tmp_path: Path, collect: Any
) -> None:
    rel = make_release(tmp_path / "art", KEY, "1.2.0", 3)
    cfg = fast_config(tmp_path, broker.url, trusted_keys_file=trust_file(tmp_path / "keys.json", KEY))

    async def sensor_check() -> str | None:
        return "electrode self-test: no current measured"

    with artifact_server(tmp_path / "art") as (base, _):
        async with collect(broker.url, cfg.device_id) as c, running(Device(cfg, health=sensor_check)) as dev:
            await publish_job(broker.url, install_job(cfg.device_id, "job-h", rel, base))
            await c.wait_for(final(c, "job-h"))
            last = [r for r in reports(c) if r.job_id == "job-h"][-1]
            assert last.state is OtaState.ROLLED_BACK
            assert "electrode self-test" in last.reason and last.fw_version == "0.1.0"
            await c.wait_for(lambda: dev.boots == 3 and c.statuses()[-1].fw_version == "0.1.0")
            boot = json.loads((cfg.data_dir / "boot.json").read_text())
            assert boot["active"] == "a" and boot["pending"] is None and boot["floor"] == 0
            # the retained job does not run again after the rollback
            await asyncio.sleep(0)
            assert states(c, "job-h").count(OtaState.QUEUED) == 1


async def test_cancel_stops_a_deferred_job(broker: Mosquitto, tmp_path: Path, collect: Any) -> None:
    rel = make_release(tmp_path / "art", KEY, "1.3.0", 1)
    cfg = fast_config(tmp_path, broker.url, trusted_keys_file=trust_file(tmp_path / "keys.json", KEY))
    with artifact_server(tmp_path / "art") as (base, _):
        async with collect(broker.url, cfg.device_id) as c, running(Device(cfg)) as dev:
            assert dev.agent is not None
            dev.agent.battery = lambda: 5.0
            await publish_job(broker.url, install_job(cfg.device_id, "job-c", rel, base))
            await c.wait_for(lambda: OtaState.DEFERRED in states(c, "job-c"))
            deferred = next(r for r in reports(c) if r.state is OtaState.DEFERRED)
            assert "battery 5% below the 20%" in deferred.reason
            await publish_job(broker.url, install_job(cfg.device_id, "job-c", rel, base, OtaAction.CANCEL))
            await c.wait_for(final(c, "job-c"))
            assert states(c, "job-c")[-1] is OtaState.CANCELLED
            assert dev.boots == 1


# -- power loss: the agent runs in its own process and is killed with SIGKILL ------------------------

AGENT_MAIN = """
import asyncio, sys
from pathlib import Path
from tests.edge.conftest import fast_config
from tests.edge.test_ota_support import Device
cfg = fast_config(Path(sys.argv[1]), sys.argv[2], device_id=sys.argv[3], trusted_keys_file=Path(sys.argv[4]))
asyncio.run(Device(cfg).run())
"""


def spawn(tmp_path: Path, url: str, device_id: str, keys: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", AGENT_MAIN, str(tmp_path), url, device_id, str(keys)], env=env, cwd=ROOT
    )


async def wait_file(predicate: Callable[[], bool], deadline_s: float = 15.0) -> None:
    async with asyncio.timeout(deadline_s):
        while not predicate():  # noqa: ASYNC110 - polls files another process writes
            await asyncio.sleep(0.002)


def stage(data_dir: Path) -> str:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        return str(json.loads((data_dir / "ota" / "job.json").read_text())["stage"])
    return ""


@pytest.mark.parametrize("when", ["download", "install"])
async def test_power_loss_ends_on_good_firmware(
    broker: Mosquitto, tmp_path: Path, collect: Any, when: str
) -> None:
    size = 256 * 1024 if when == "download" else 24 * 1024 * 1024
    rel = make_release(tmp_path / "art", KEY, "1.4.0", 4, size=size)
    keys = trust_file(tmp_path / "keys.json", KEY)
    cfg = fast_config(tmp_path, broker.url, trusted_keys_file=keys)
    with artifact_server(tmp_path / "art") as (base, server):
        async with collect(broker.url, cfg.device_id) as c:
            if when == "download":
                server.stall_after = size // 3
            proc = spawn(tmp_path, broker.url, cfg.device_id, keys)
            try:
                await c.wait_for(lambda: any(s.state.value == "online" for s in c.statuses()))
                await publish_job(broker.url, install_job(cfg.device_id, "job-p", rel, base))
                if when == "download":
                    part = cfg.data_dir / "ota" / "job-p.part"
                    await wait_file(lambda: part.exists() and part.stat().st_size >= size // 3)
                else:
                    await wait_file(lambda: stage(cfg.data_dir) == "installing", 30)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                killed_at = stage(cfg.data_dir)
                server.stall_after = None
                proc = spawn(tmp_path, broker.url, cfg.device_id, keys)
                await c.wait_for(final(c, "job-p"), 40)
            finally:
                proc.kill()
                proc.wait(10)
            got = states(c, "job-p")
            assert got[-1] is OtaState.SUCCEEDED, got
            ok = [r for r in reports(c) if r.state is OtaState.SUCCEEDED][-1]
            assert ok.fw_version == "1.4.0"
            await c.wait_for(lambda: c.statuses()[-1].fw_version == "1.4.0")
            if when == "download":
                assert killed_at == "downloading"
                assert f"bytes={size // 3}-" in [r for r in server.ranges if r], server.ranges
            assert json.loads((cfg.data_dir / "boot.json").read_text())["active"] == "b"
            assert (cfg.data_dir / "slot_b" / "firmware.bin").read_bytes() == rel.path.read_bytes()
            statuses: list[Status] = c.statuses()
            assert statuses
