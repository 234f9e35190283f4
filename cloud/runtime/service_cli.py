"""What every service command (`ingest`, `alerts run`, `ota serve`) shares: the metrics-port option, the
logging set-up with the configuration read from the environment, and running the service with a clear
error for a metrics port that is taken (exit 2, what to do next)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cloud.config import CloudConfig

MetricsPort = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=65535,
        help="Serve /metrics, /healthz and /readyz on this port (0: any free port). "
        "Default MICROFLEET_METRICS_PORT; off if unset.",
    ),
]


def configure(verbose: bool) -> CloudConfig:
    """Set up logging (MICROFLEET_LOG_LEVEL, MICROFLEET_LOG_FORMAT) and read MICROFLEET_*; a bad setting
    is one line on stderr and exit 2."""
    from cloud.config import CloudConfig
    from cloud.runtime import logs

    try:
        logs.setup(verbose)
        return CloudConfig.from_env()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def run(service_main: Callable[[], object]) -> None:
    """Run a service until it stops; a metrics port that is taken is one line on stderr and exit 2."""
    from cloud.runtime.metrics import MetricsPortError

    try:
        service_main()
    except MetricsPortError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass
