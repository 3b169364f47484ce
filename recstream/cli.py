"""The ``recstream`` command line: infra, worker, trainer, full-update, model, produce, generate, lag, demo, bench.

Every command turns a :class:`~infra.errors.RecstreamError` into ``error: <message>`` on stderr and a
non-zero exit code — never a stack trace.
"""

from __future__ import annotations

from pathlib import Path

import click

from filters.events import CANARY_FAMILIES
from infra.errors import InputError
from recstream.cli_support import friendly_errors, settings_from_context


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recstream")
def main() -> None:
    """recstream: real-time recommender features from Kafka, served from Redis."""


@main.command()
@click.option("--loglevel", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
@friendly_errors
def worker(ctx: click.Context, loglevel: str) -> None:
    """Run the Faust worker (all agents) in the foreground until Ctrl-C / SIGTERM."""
    from stream.app import run_worker

    run_worker(settings_from_context(ctx), loglevel=loglevel)


@main.command()
@click.option("--until-caught-up", is_flag=True, help="Wait until everything produced so far is consumed.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait with --until-caught-up.")
@click.option("--quiet", is_flag=True, help="Print only the total.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per partition (offsets and seconds).")
@click.option("--watch", type=float, default=None, metavar="S", help="Refresh in place every S seconds.")
@click.option("--serve", "serve_port", type=int, default=None, metavar="PORT",
              help="Export the lag as Prometheus gauges on PORT, refreshed every --watch seconds (default 5): "
                   "lag of a group whose workers are down.")
@click.pass_context
@friendly_errors
def lag(ctx: click.Context, until_caught_up: bool, timeout: float, quiet: bool, as_json: bool,
        watch: float | None, serve_port: int | None) -> None:
    """Lag of the worker's consumer group per partition: messages (end − committed) and seconds (age of
    the oldest unprocessed record; 0 when caught up)."""
    import json
    import time

    from stream.lag import LagExporter, LagProbe, format_rows

    probe = LagProbe(settings_from_context(ctx))
    exporter, refresh_s = None, watch or 5.0
    if serve_port is not None:
        from infra import metrics

        metrics.serve(serve_port, "--serve")
        exporter, watch = LagExporter(probe), refresh_s
    while True:
        if exporter is not None:  # an exporter outlives a Kafka outage: it says so in recstream_kafka_up
            rows = exporter.refresh()
            if rows is None:
                time.sleep(refresh_s)
                continue
        else:
            rows = probe.wait_until_caught_up(timeout) if until_caught_up else probe.read()
            rows = probe.with_seconds(rows, int(time.time() * 1000))
        text = "\n".join(json.dumps(r.as_json()) for r in rows) if as_json else format_rows(rows)
        if watch is None:
            click.echo(text.splitlines()[-1] if quiet else text)
            return
        click.echo("\x1b[H\x1b[2J" + text, nl=True)  # clear the screen, then the table
        time.sleep(watch)


@main.command()
@click.option("--users", default=2000, show_default=True)
@click.option("--items", default=5000, show_default=True)
@click.option("--days", default=3, show_default=True)
@click.option("--events", default=100_000, show_default=True, help="Approximate number of events.")
@click.option("--rate", default=5000.0, show_default=True, help="Events/s of the live phase.")
@click.option("--live-seconds", "live_s", default=30.0, show_default=True, help="Length of the live phase.")
@click.pass_context
@friendly_errors
def demo(ctx: click.Context, users: int, items: int, days: int, events: int, rate: float, live_s: float) -> None:
    """Run everything end to end on this machine, print what flowed, stop cleanly."""
    from recstream.demo import run_demo

    run_demo(settings_from_context(ctx), users=users, items=items, days=days, events=events, rate=rate,
             live_s=live_s)


def _round_cell(family: str, delays: list[float], missed: int) -> str:
    """One family's part of a canary round's line.

    >>> _round_cell("stats", [0.3, 0.1, 0.2], 0), _round_cell("exposure", [], 0), _round_cell("last_n", [0.1], 7)
    ('stats p50 0.20 s', 'exposure no probe', 'last_n p50 0.10 s (7 missed)')
    """
    if not delays:
        return f"{family} missed {missed}" if missed else f"{family} no probe"
    cell = f"{family} p50 {sorted(delays)[len(delays) // 2]:.2f} s"
    return f"{cell} ({missed} missed)" if missed else cell


@main.command()
@click.option("--interval", default=5.0, show_default=True, help="Seconds between rounds.")
@click.option("--rounds", type=int, default=None, help="Stop after this many rounds (default: run until Ctrl-C).")
@click.option("--metrics-port", type=int, default=None,
              help="/metrics port (0 = none; default: monitoring.canary_port, 9110, which Prometheus scrapes).")
@click.option("--families", default=",".join(CANARY_FAMILIES), show_default=True,
              help="Comma-separated families to probe (embeddings only while a model version is current).")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds before a probe is a miss.")
@click.option("--log-json", "log_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append each round's delays as one JSON line to this file.")
@click.pass_context
@friendly_errors
def canary(ctx: click.Context, interval: float, rounds: int | None, metrics_port: int | None, families: str,
           timeout: float, log_json: Path | None) -> None:
    """Produce canary events per partition every few seconds; measure produce → readable per family."""
    import itertools
    import json
    import time

    from infra import metrics
    from infra.topics import require_kafka
    from recstream.canary import Canary
    from serving.client import FeatureClient
    from stream.producer import EventProducer

    chosen = [f.strip() for f in families.split(",") if f.strip()]
    unknown = sorted(set(chosen) - set(CANARY_FAMILIES))
    if unknown or not chosen:
        msg = f"--families: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(CANARY_FAMILIES)}"
        raise InputError(msg)
    settings = settings_from_context(ctx)
    client = FeatureClient(settings=settings)  # Redis first, then Kafka: one clear line for either
    require_kafka(settings)
    metrics.serve(settings.monitoring.canary_port if metrics_port is None else metrics_port, "--metrics-port")
    probe = Canary(settings, client, timeout_s=timeout, interval_s=interval,
                   families=chosen)
    try:
        with EventProducer(settings) as producer:
            for k in itertools.count(1):
                got = probe.round(producer)
                if log_json is not None:
                    with log_json.open("a") as out:
                        out.write(json.dumps({"round": k, "wall_ms": int(time.time() * 1000), "delays_s": got.delays,
                                              "missed": got.missed, "partitions": settings.kafka.partitions}) + "\n")
                line = ", ".join(_round_cell(f, d, got.missed[f]) for f, d in got.delays.items())
                click.echo(f"round {k}: {line}")
                if rounds is not None and k >= rounds:
                    return
                time.sleep(interval)
    finally:
        probe.close()


@main.command()
@click.option("--flush", is_flag=True, help="Delete recstream's feature keys first (model versions are kept).")
@click.pass_context
@friendly_errors
def rebuild(ctx: click.Context, flush: bool) -> None:
    """Rebuild every feature into an empty Redis by replaying the retained Kafka topics (workers stopped)."""
    from recstream.rebuild import run_rebuild

    result = run_rebuild(settings_from_context(ctx), flush=flush)
    flushed = f" after deleting {result.flushed:,} feature keys" if result.flushed else ""
    click.echo(f"rebuilt{flushed}: {result.events:,} event records replayed in {result.seconds:.1f} s "
               f"({result.records_per_s:,.0f} records/s); the trainer skips the re-emitted samples")


BENCHMARKS = {
    "all": "bench.all_bench",
    "batch-shape": "bench.batch_shape_bench",
    "chaos": "bench.chaos_bench",
    "freshness": "bench.freshness_bench",
    "cost": "bench.cost_bench",
    "ingest": "bench.ingest_bench",
    "join": "bench.join_bench",
    "learning": "bench.learning_bench",
    "learning-quality": "bench.learning_quality",
    "bloom": "bench.bloom_bench",
    "peers": "bench.peers_bench",
    "reads": "bench.reads_bench",
    "serving": "bench.serving_bench",
    "stats": "bench.stats_bench",
}


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("name", type=click.Choice(sorted(BENCHMARKS)))
@click.pass_context
@friendly_errors
def bench(ctx: click.Context, name: str) -> None:
    """Run a benchmark (extra options go to it; see `recstream bench NAME --help`)."""
    import importlib

    importlib.import_module(BENCHMARKS[name]).main(ctx.args)


def _register() -> None:
    from recstream.data_cli import generate, produce
    from recstream.infra_cli import infra
    from recstream.learning_cli import full_update, model, trainer
    from recstream.samples_cli import samples
    from recstream.serve_cli import serve

    main.add_command(infra)
    main.add_command(produce)
    main.add_command(generate)
    main.add_command(samples)
    main.add_command(trainer)
    main.add_command(full_update)
    main.add_command(model)
    main.add_command(serve)


_register()

if __name__ == "__main__":
    main()
