"""Virtual devices: the real edge agent with a simulated sensor, clock and user."""
