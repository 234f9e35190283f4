"""The wire contract of microfleet: topics, messages and the one codec. Pure: imports nothing of ours."""

SCHEMA_VERSION = 1
