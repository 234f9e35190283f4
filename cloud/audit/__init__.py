"""Readers of the safety audit trails (migration 0104): override changes, gate overrides, health-data reads.

`microfleet audit list` (cli.py) and `GET /audit` (api.py) read them through the same query (queries.py).
Nothing here writes: the rows are written by the actions they record (cloud/alerts/overrides.py,
cloud/protocols/store.py, cloud/api/deps.py)."""
