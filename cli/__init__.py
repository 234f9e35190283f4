"""The `microfleet` command: a thin root that mounts the sub-apps of cloud, edge and simulators."""
