"""``recstream trainer``, ``recstream full-update`` and ``recstream model list|show|rollback``.

Only ``trainer`` and ``full-update`` import torch (lazily, inside the command); ``model`` works on a
serving-only install.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click
import msgspec
import redis

from filters.model_store import ModelStore
from infra.redis_client import connect
from infra.settings import Settings
from recstream.cli_support import friendly_errors, settings_from_context

__all__ = ["full_update", "model", "trainer"]


def _store(settings: Settings) -> ModelStore:
    client: redis.Redis = connect(settings.redis.effective_url, cluster=settings.redis.cluster)
    return ModelStore(client, settings.redis.shards)


@click.command()
@click.option("--until-idle", type=float, default=None, metavar="S",
              help="Stop after S seconds without a sample (publishing once more); default: run until Ctrl-C.")
@click.option("--metrics-log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append the windowed prequential metrics here at every publish "
              "(default: <home>/logs/trainer.jsonl).")
@click.pass_context
@friendly_errors
def trainer(ctx: click.Context, until_idle: float | None, metrics_log: Path | None) -> None:
    """Train the ID embeddings on the samples topic and publish them every few seconds."""
    from online_learning.trainer import run_trainer

    settings = settings_from_context(ctx)
    done = run_trainer(settings, until_idle, metrics_log or settings.home / "logs" / "trainer.jsonl")
    m = done.manifest
    click.echo(f"trainer stopped: version {m.version}, {m.samples_seen:,} positives trained, "
               f"{m.publishes:,} publishes")


def _yesterday() -> str:
    return (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()


@click.command("full-update")
@click.option("--day", default=None, metavar="YYYY-MM-DD", help="UTC day of event time (default: yesterday).")
@click.option("--from", "source", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A `recstream samples export` JSONL file instead of the samples topic.")
@click.option("--force", is_flag=True, help="Train even if a kept version was made from this day already.")
@click.pass_context
@friendly_errors
def full_update(ctx: click.Context, day: str | None, source: Path | None, force: bool) -> None:
    """Nightly full update: one day of samples, shuffled, one epoch, the whole network → a new version."""
    from tqdm import tqdm

    from online_learning.full_update import read_day, run_full_update

    settings = settings_from_context(ctx)
    day = day or _yesterday()
    samples, bad = read_day(settings, day, source)
    if bad:
        click.echo(f"skipped {bad:,} records that are not samples", err=True)
    with tqdm(total=len(samples), desc=f"full update {day}", unit="sample", disable=None) as bar:
        m = run_full_update(settings, _store(settings), day, samples, force=force, progress=bar.update)
    if m is None:
        click.echo(f"a kept version was already made from {day}; nothing to do (--force to train again)")
        return
    click.echo(f"published {m.version} (full-{day}, from {m.parent}): {len(samples):,} positives, "
               f"{m.user_rows:,} user rows, {m.item_rows:,} item rows")


@click.group()
def model() -> None:
    """Model versions in Redis: list, show, rollback."""


@model.command("list")
@click.pass_context
@friendly_errors
def list_versions(ctx: click.Context) -> None:
    """The kept versions, oldest first; * marks the one serving reads."""
    store = _store(settings_from_context(ctx))
    current = store.current()
    versions = store.versions()
    if not versions:
        click.echo("no model version yet: start `recstream trainer` or run `recstream full-update`")
        return
    click.echo(f"  {'version':9} {'model':18} {'created (UTC)':20} {'publishes':>9} {'positives':>10}")
    for v in versions:
        m = store.manifest(v)
        created = dt.datetime.fromtimestamp(m.created_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        mark = "*" if v == current else " "
        click.echo(f"{mark} {v:9} {m.model_id:18} {created:20} {m.publishes:>9,} {m.samples_seen:>10,}")


@model.command()
@click.argument("version", required=False)
@click.pass_context
@friendly_errors
def show(ctx: click.Context, version: str | None) -> None:
    """One version's manifest as JSON (default: the current one)."""
    store = _store(settings_from_context(ctx))
    version = version or store.current()
    if version is None:
        click.echo("no model version yet", err=True)
        raise SystemExit(1)
    click.echo(json.dumps(msgspec.to_builtins(store.manifest(version)), indent=2))


@model.command()
@click.argument("version")
@click.pass_context
@friendly_errors
def rollback(ctx: click.Context, version: str) -> None:
    """Serve VERSION again (a kept one); the trainer restarts its incremental chain from it."""
    from online_learning.publish import ModelPublisher

    settings = settings_from_context(ctx)
    ModelPublisher(_store(settings), settings.learning.keep_versions).rollback(version)
    click.echo(f"serving {version}")
