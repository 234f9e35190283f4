"""The edge agent: records sessions, keeps them in a SQLite outbox, publishes them over MQTT."""
