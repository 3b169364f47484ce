"""``recstream infra up|down|status``: the local Kafka broker and Redis server.

Exit codes: 0 = fine (``status``: everything is up), 1 = error (one ``error: ...`` line on stderr,
never a stack trace), 3 = ``status`` found a service stopped.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from infra.errors import RecstreamError
from infra.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])
EXIT_NOT_RUNNING = 3


def _errors_to_exit(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RecstreamError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _settings(ctx: click.Context) -> Settings:
    """The settings shared with the parent ``recstream`` group (loaded once)."""
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = load_settings()
    settings: Settings = obj["settings"]
    return settings


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
@click.pass_context
@_errors_to_exit
def up(ctx: click.Context) -> None:
    """Start Redis and Kafka (reusing running ones) and create the topics."""
    from infra.services import up as services_up

    settings = _settings(ctx)
    started = time.monotonic()
    services_up(settings)
    _echo_status(settings)
    click.echo(f"up in {time.monotonic() - started:.1f}s (data home {settings.home})")


@infra.command()
@click.pass_context
@_errors_to_exit
def down(ctx: click.Context) -> None:
    """Stop the Kafka broker and Redis server that ``infra up`` started."""
    from infra.services import down as services_down

    stopped = services_down(_settings(ctx))
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@infra.command()
@click.pass_context
@_errors_to_exit
def status(ctx: click.Context) -> None:
    """Show each service: running/stopped, pid, address, log file (exit 3 unless all are up)."""
    if not _echo_status(_settings(ctx)):
        sys.exit(EXIT_NOT_RUNNING)
