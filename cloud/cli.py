"""The cloud's commands, mounted at the top of `microfleet` by cli/main.py.

Heavy dependencies (psycopg, paho) are imported inside the sub-apps' commands, so `--help` stays fast.
"""

from __future__ import annotations

import typer

from cloud.alerts.cli import app as alerts_app
from cloud.api.cli import app as api_app
from cloud.audit.cli import app as audit_app
from cloud.dashboards.cli import app as dashboards_app
from cloud.db.cli import app as db_app
from cloud.identity.cli import broker_app, devices_app, keys_app, pki_app
from cloud.identity.nats_cli import app as nats_auth_app
from cloud.ingest.cli import app as ingest_app
from cloud.ota.cli import app as ota_app
from cloud.protocols.cli import app as protocol_app

app = typer.Typer(no_args_is_help=True)
app.add_typer(db_app, name="db", help="Database schema: migrate, status, maintain.")
app.add_typer(alerts_app, name="alerts", help="Alerts: run the engine, list, ack, resolve, snooze.")
app.add_typer(api_app, name="api", help="The HTTP API: serve, tokens.")
app.add_typer(audit_app, name="audit")
app.add_typer(dashboards_app, name="dashboards", help="Grafana dashboards as code: build, publish.")
app.add_typer(devices_app, name="devices")
app.add_typer(
    ota_app, name="ota", help="Firmware: releases, staged rollouts, pause, resume, cancel, roll back."
)
app.add_typer(protocol_app, name="protocol", help="Treatment protocols: validate, publish, status.")
app.add_typer(broker_app, name="broker")
app.add_typer(nats_auth_app, name="nats-auth")
app.add_typer(pki_app, name="pki")
app.add_typer(keys_app, name="keys")
for command in ingest_app.registered_commands:
    app.registered_commands.append(command)
