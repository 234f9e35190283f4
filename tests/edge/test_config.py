from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, EdgeConfig


def test_from_env_reads_variables_and_overrides_win() -> None:
    env = {
        "MICROFLEET_DEVICE_ID": "dev-1",
        "MICROFLEET_EDGE_DATA_DIR": "/tmp/x",
        "MICROFLEET_EDGE_OUTBOX_MAX_ROWS": "123",
        "MICROFLEET_EDGE_RECONNECT_MAX_S": "5.5",
    }
    cfg = EdgeConfig.from_env(env, mqtt_url="mqtt://h:1884")
    assert (cfg.device_id, cfg.outbox_max_rows, cfg.reconnect_max_s, cfg.mqtt_url) == (
        "dev-1",
        123,
        5.5,
        "mqtt://h:1884",
    )
    assert cfg.outbox_path == Path("/tmp/x/outbox.sqlite3")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "MICROFLEET_DEVICE_ID"),
        ({"MICROFLEET_DEVICE_ID": "bad id"}, "not valid"),
        (
            {"MICROFLEET_DEVICE_ID": "d", "MICROFLEET_EDGE_OUTBOX_MAX_ROWS": "lots"},
            "MICROFLEET_EDGE_OUTBOX_MAX_ROWS",
        ),
        ({"MICROFLEET_DEVICE_ID": "d", "MICROFLEET_MQTT_URL": "http://x"}, "mqtt://"),
        ({"MICROFLEET_DEVICE_ID": "d", "MICROFLEET_EDGE_OUTBOX_SYNC": "maybe"}, "outbox_sync"),
        ({"MICROFLEET_DEVICE_ID": "d", "MICROFLEET_EDGE_ACK": "puback"}, "MICROFLEET_EDGE_ACK"),
        ({"MICROFLEET_DEVICE_ID": "d", "MICROFLEET_EDGE_COMMIT_TIMEOUT_S": "0"}, "commit_timeout_s"),
        ({"MICROFLEET_DEVICE_ID": "d", "MICROFLEET_EDGE_COMMIT_TIMEOUT_S": "1000"}, "commit_timeout_max_s"),
        ({"MICROFLEET_DEVICE_ID": "d", "MICROFLEET_EDGE_COMMIT_TIMEOUT_S": "soon"}, "not a valid float"),
        ({"MICROFLEET_DEVICE_ID": "d", "MICROFLEET_EDGE_SYNC_FILL_RATIO": "1.5"}, "sync_fill_ratio"),
    ],
)
def test_bad_settings_say_what_to_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EdgeConfig.from_env(env)


def test_acknowledgement_settings_default_to_end_to_end_and_read_their_variables() -> None:
    cfg = EdgeConfig.from_env({"MICROFLEET_DEVICE_ID": "d"})
    assert (cfg.ack_mode, cfg.commit_timeout_s, cfg.commit_timeout_max_s, cfg.sync_fill_ratio) == (
        "committed",
        60.0,
        900.0,
        0.8,
    )
    env = {
        "MICROFLEET_DEVICE_ID": "d",
        "MICROFLEET_EDGE_ACK": "broker",
        "MICROFLEET_EDGE_COMMIT_TIMEOUT_S": "5",
        "MICROFLEET_EDGE_COMMIT_TIMEOUT_MAX_S": "40",
        "MICROFLEET_EDGE_SYNC_FILL_RATIO": "0.5",
    }
    cfg = EdgeConfig.from_env(env)
    assert (cfg.ack_mode, cfg.commit_timeout_s, cfg.commit_timeout_max_s, cfg.sync_fill_ratio) == (
        "broker",
        5.0,
        40.0,
        0.5,
    )
