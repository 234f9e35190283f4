"""The simulator's power cut mid-OTA, on the real agent in-process: the device powers on again, resumes
the download where it was cut, and ends on the new firmware, which it reports truthfully. (The last will on
a lost connection is tested in tests/edge/test_agent.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contract.messages import DeviceState, OtaState
from contract.signing import SigningKey
from simulators.faults import power_loss_mid_ota
from tests.edge.conftest import collect as collect  # the fixture
from tests.edge.conftest import fast_config
from tests.edge.test_ota_support import (
    FAST,
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
            async with running(Device(cfg, settings=FAST)) as device:
                await c.wait_for(lambda: any(m.state is DeviceState.ONLINE for m in c.statuses()))
                await publish_job(broker.url, install_job(cfg.device_id, "job-cut", rel, base))
                assert device.agent is not None
                died_in = await power_loss_mid_ota(device.agent, "job-cut", stage="downloading")
            assert died_in == "downloading"
            server.stall_after = None
            async with running(Device(cfg, settings=FAST)):
                await c.wait_for(final(c, "job-cut"), 40)
    assert states(c, "job-cut")[-1] is OtaState.SUCCEEDED
    ok = [r for r in reports(c) if r.state is OtaState.SUCCEEDED][-1]
    assert ok.fw_version == "2.0.0"
    # powered on again, it resumed the download where the cut left it, not from the start
    resumed = [int(r.removeprefix("bytes=").rstrip("-")) for r in server.ranges if r]
    assert resumed and 0 < resumed[0] <= size // 4, server.ranges
