"""Firmware over the air on the device: planner.py (pure decisions), slots.py (A/B slots and boot.json on
disk), installer.py (download with resume, verify, install), client.py (the job runner the agent owns)."""
