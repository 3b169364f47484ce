"""``recstream serve``: the HTTP serving API on uvicorn (docs/serving.md)."""

from __future__ import annotations

import os

import click

from infra.settings import to_env
from recstream.cli_support import friendly_errors, settings_from_context

__all__ = ["serve"]


@click.command()
@click.option("--host", default=None, help="Interface (default: serving.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: serving.port, 8080).")
@click.option("--workers", type=int, default=None, help="uvicorn worker processes (default: serving.workers).")
@click.pass_context
@friendly_errors
def serve(ctx: click.Context, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve features, embeddings and recommendations over HTTP (OpenAPI at /docs)."""
    import uvicorn

    settings = settings_from_context(ctx)
    os.environ.update(to_env(settings))  # every uvicorn worker rebuilds exactly these settings
    cfg = settings.serving
    uvicorn.run("serving.http:app_from_env", factory=True, host=host or cfg.host, port=port or cfg.port,
                workers=workers or cfg.workers, log_level="warning", access_log=False)
