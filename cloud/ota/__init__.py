"""Firmware over the air, cloud side: artifacts.py, server.py, rollout.py (pure), store.py, service.py,
cli.py, api.py. See README.md."""
