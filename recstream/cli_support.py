"""What every ``recstream`` sub-command shares: one-line errors and the settings of the parent group.

>>> @friendly_errors
... def boom() -> None:
...     raise InputError("no such file: x.jsonl")
>>> try:
...     boom()
... except SystemExit as exc:
...     print("exit", exc.code)
exit 1
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from infra.errors import InputError, RecstreamError  # noqa: F401  (InputError: doctest)
from infra.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Decorator: print a project error as ``error: <message>`` on stderr and exit 1 — never a stack trace."""

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


def settings_from_context(ctx: click.Context) -> Settings:
    """The settings shared by all sub-commands, loaded once (a ConfigError propagates to the decorator)."""
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = load_settings()
    settings: Settings = obj["settings"]
    return settings
