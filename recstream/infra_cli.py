"""``recstream infra up|down|status``: the local Kafka broker and Redis server.

Exit codes: 0 = fine (``status``: everything is up), 1 = error (one ``error: ...`` line on stderr,
never a stack trace), 3 = ``status`` found a service stopped.
"""

from __future__ import annotations

import sys
import time

import click

from infra.settings import Settings
from recstream.cli_support import friendly_errors, settings_from_context

EXIT_NOT_RUNNING = 3


def _echo_status(settings: Settings) -> bool:
    from infra.services import status

    st = status(settings)
    for service in st:
        click.echo(service.describe())
    return st.all_up


@click.group()
def infra() -> None:
    """Start, stop and inspect the local Kafka broker and Redis server."""


@infra.command()
@click.option("--monitoring", is_flag=True, help="Also start Prometheus with recstream's alert rules.")
@click.pass_context
@friendly_errors
def up(ctx: click.Context, monitoring: bool) -> None:
    """Start Redis and Kafka (reusing running ones) and create the topics."""
    from infra.services import up as services_up

    settings = settings_from_context(ctx)
    started = time.monotonic()
    services_up(settings)
    _echo_status(settings)
    if monitoring:
        from infra import prometheus_server

        pid = prometheus_server.start(settings)
        click.echo(f"prometheus  running  pid {pid}  http://127.0.0.1:{settings.monitoring.prometheus_port}  "
                   f"rules {prometheus_server.RULES}")
    click.echo(f"up in {time.monotonic() - started:.1f}s (data home {settings.home})")


@infra.command()
@click.pass_context
@friendly_errors
def down(ctx: click.Context) -> None:
    """Stop the Kafka broker and Redis server that ``infra up`` started."""
    from infra import prometheus_server
    from infra.services import down as services_down

    settings = settings_from_context(ctx)
    stopped = (["prometheus"] if prometheus_server.stop(settings) else []) + services_down(settings)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@infra.command()
@click.pass_context
@friendly_errors
def status(ctx: click.Context) -> None:
    """Show each service: running/stopped, pid, address, log file (exit 3 unless all are up)."""
    if not _echo_status(settings_from_context(ctx)):
        sys.exit(EXIT_NOT_RUNNING)
