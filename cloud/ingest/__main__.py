"""`python -m cloud.ingest --consumer-id ingest-1`: the same as `microfleet ingest`."""

from cloud.ingest.cli import app

app(prog_name="microfleet ingest")
