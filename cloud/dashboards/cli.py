"""`microfleet dashboards build|publish` (the lead mounts this typer app in cloud/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cloud.dashboards.catalog import DEFAULT_OUT

app = typer.Typer(
    no_args_is_help=True, help="Grafana dashboards as code: build the JSON files, publish them."
)


@app.command()
def build(
    out: Annotated[Path, typer.Option(help="Folder for the dashboard JSON files.")] = DEFAULT_OUT,
) -> None:
    """Write every dashboard as Grafana JSON into the provisioning folder."""
    from cloud.dashboards.catalog import build as build_files

    for path in build_files(out):
        typer.echo(str(path))


@app.command()
def publish(
    url: Annotated[
        str, typer.Option(envvar="GRAFANA_URL", help="Grafana base URL.")
    ] = "http://localhost:3000",
    token: Annotated[
        str | None, typer.Option(envvar="GRAFANA_TOKEN", help="Service account token (else user/password).")
    ] = None,
    user: Annotated[str, typer.Option(envvar="GRAFANA_USER")] = "admin",
    password: Annotated[str, typer.Option(envvar="GRAFANA_PASSWORD")] = "admin",
    folder: Annotated[str, typer.Option(help="Folder uid (created when missing).")] = "microfleet",
    datasource: Annotated[
        bool, typer.Option(help="Also create or update the datasource from MICROFLEET_DATABASE_URL.")
    ] = False,
) -> None:
    """Create or overwrite every dashboard in a running Grafana (idempotent)."""
    from cloud.config import CloudConfig
    from cloud.dashboards.publish import PublishError, connect
    from cloud.dashboards.publish import publish as publish_all

    database_url = CloudConfig.from_env().database_url if datasource else None
    try:
        for item in publish_all(
            connect(url, token, user, password), folder_uid=folder, database_url=database_url
        ):
            typer.echo(f"{item.uid}  version {item.version}  {url.rstrip('/')}{item.url}")
    except PublishError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
