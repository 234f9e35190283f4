"""The cloud side: ingest to TimescaleDB/PostgreSQL, alerts, OTA, protocols, HTTP API and CLI."""
