"""Cloud ingest: MQTT 5 shared-subscription consumers that batch uplink messages and write them to
PostgreSQL/TimescaleDB with binary COPY, acknowledging the broker only after commit.

batcher.py (pure) -> writer.py (one transaction per batch) <- consumer.py (paho adapter) ; service.py is
the composition root, cli.py the `microfleet ingest` command.
"""
