"""`microfleet`: one command for the whole platform.

Each package offers its own typer sub-app; this root only mounts them, so no package imports another
to offer its commands. A sub-app whose extra is not installed (a device has no psycopg) is left out.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated

import typer

app = typer.Typer(
    name="microfleet",
    help="Run and operate a fleet of connected microcurrent skincare devices.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"microfleet {package_version('microfleet')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("microfleet (not installed: `pip install -e .` records its version)")
        raise typer.Exit()


@app.callback()
def main(
    _version_: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the installed version and exit."
        ),
    ] = False,
) -> None:
    """Run and operate a fleet of connected microcurrent skincare devices."""


OURS = {"cli", "cloud", "contract", "edge", "simulators"}


def _broken(exc: ImportError) -> bool:
    """True when an import failed inside our own code (a bug: raise it). False when a third-party extra is
    not installed, or one of our top-level packages is absent as a whole (the device image ships no
    `cloud`): that command is left out."""
    missing = exc.name or ""
    if missing in OURS:  # a whole package of ours is not installed here: only cli and contract must be
        return missing in {"cli", "contract"}
    return missing.split(".")[0] in OURS


_SUBAPPS = (
    # (module, attribute, name or None to merge its commands at the top level)
    ("cloud.cli", "app", None),
    ("cloud.ingest.quarantine_cli", "app", "quarantine"),
    ("cloud.runtime.nats_cli", "app", "nats"),
    ("edge.cli", "app", "edge"),
    ("simulators.cli", "app", None),
)

for module_name, attr, name in _SUBAPPS:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an extra, or one of our packages, that this installation does not have
        if _broken(exc):
            raise
        continue
    sub: typer.Typer = getattr(module, attr)
    if name is None:
        for command in sub.registered_commands:
            app.registered_commands.append(command)
        for group in sub.registered_groups:
            app.registered_groups.append(group)
    else:
        app.add_typer(sub, name=name)

# The demo and the load tests need several packages: they live here, each left out when this
# installation lacks what it imports (the cloud image has no psutil, the device image no psycopg).
for module_name, attr, name in (
    ("cli.demo", "demo", "demo"),
    ("cli.loadtest", "loadtest", "loadtest"),
    ("cli.compose_loadtest", "compose_loadtest", "compose-loadtest"),
):
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if _broken(exc):
            raise
        continue
    app.command(name)(getattr(module, attr))

if __name__ == "__main__":
    app()
