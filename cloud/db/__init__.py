"""Storage: versioned migrations, connections, partition maintenance and rollups.

Two storage paths share the same relation names and columns (docs/data-model.md): TimescaleDB
(hypertables, compression, continuous aggregates) when the extension is available, plain PostgreSQL
(native range partitioning, rollup tables) otherwise. See cloud/db/migrations/README.md.
"""
