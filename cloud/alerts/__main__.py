"""`python -m cloud.alerts run ...`: the alert engine's commands without the root CLI."""

from cloud.alerts.cli import app

app()
