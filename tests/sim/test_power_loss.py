"""The simulator's power cut mid-OTA, on the real agent in-process: the device powers on again, resumes
the download where it was cut, and ends on the new firmware, which it reports truthfully. (The last will on
a lost connection is tested in tests/edge/test_agent.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from contract.messages import DeviceState, OtaReport, OtaState
from contract.signing import SigningKey
from simulators.faults import power_loss_mid_ota
from tests.edge.conftest import collect as collect  # the fixture
from tests.edge.conftest import fast_config
from tests.edge.test_ota_support import (
    FAST,
    Device,
    artifact_server,
    install_job,
    make_release,
    publish_job,
    trust_file,
)
from tests.support.services import Mosquitto

KEY = SigningKey.generate()


async def test_power_cut_while_downloading_then_power_on(
    broker: Mosquitto, tmp_path: Path, collect: Any
) -> None:
    size = 512 * 1024
    rel = make_release(tmp_path / "art", KEY, "2.0.0", 7, size=size)
    cfg = fast_config(tmp_path, broker.url, trusted_keys_file=trust_file(tmp_path / "keys.json", KEY))
    with artifact_server(tmp_path / "art") as (base, server):
        server.stall_after = size // 4  # the download hangs a quarter of the way: the power goes then
        async with collect(broker.url, cfg.device_id) as c:
            device = Device(cfg, settings=FAST)
            first = asyncio.create_task(device.run())
            try:
                async with asyncio.timeout(10):
                    await device.booted.wait()
                await c.wait_for(lambda: any(m.state is DeviceState.ONLINE for m in c.statuses()))
                await publish_job(broker.url, install_job(cfg.device_id, "job-cut", rel, base))
                assert device.agent is not None
                died_in = await power_loss_mid_ota(device.agent, "job-cut", stage="downloading")
                first.cancel()
            finally:
                await asyncio.gather(first, return_exceptions=True)
            assert died_in == "downloading"
            server.stall_after = None
            again = Device(cfg, settings=FAST)
            second = asyncio.create_task(again.run())
            try:
                done = lambda: any(  # noqa: E731
                    isinstance(m, OtaReport) and m.job_id == "job-cut" and m.state is OtaState.SUCCEEDED
                    for m in c.messages()
                )
                await c.wait_for(done, 40)
            finally:
                second.cancel()
                await asyncio.gather(second, return_exceptions=True)
    ok = [m for m in c.messages() if isinstance(m, OtaReport) and m.state is OtaState.SUCCEEDED][-1]
    assert ok.fw_version == "2.0.0"
    # powered on again, it resumed the download where the cut left it, not from the start
    resumed = [int(r.removeprefix("bytes=").rstrip("-")) for r in server.ranges if r]
    assert resumed and 0 < resumed[0] <= size // 4, server.ranges
