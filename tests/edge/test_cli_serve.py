"""`microfleet edge serve` as a real process: comes online, and goes offline cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from contract.messages import DeviceState
from tests.edge.conftest import ThreadCollector
from tests.support.services import Mosquitto


async def test_serve_runs_until_sigterm_and_says_goodbye(tmp_path: Path, broker: Mosquitto) -> None:
    collector = ThreadCollector(broker.url, "mf/v1/hub-7/up/status")
    env = {**os.environ, "MICROFLEET_EDGE_DATA_DIR": str(tmp_path / "edge")}
    proc = subprocess.Popen(  # noqa: ASYNC220 - a whole process under test, started once
        [sys.executable, "-m", "cli.main", "edge", "serve", "--device-id", "hub-7", "--mqtt-url", broker.url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await collector.wait_for(lambda: any(m.state is DeviceState.ONLINE for m in collector.messages()))  # type: ignore[union-attr]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == {"device_id": "hub-7", "restarts": 0}
        await collector.wait_for(lambda: collector.messages()[-1].state is DeviceState.OFFLINE)  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.close()
