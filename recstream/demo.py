"""``recstream demo``: the whole product on one machine, end to end, in a few minutes.

Infra up (a private data home: ``<home>/demo``) → worker → synthetic data generated and replayed
(item metadata, events with duplicates and late arrivals, a few invalid messages) → wait until caught
up → print what flowed: throughput, dead letters, freshness (a new click is readable within …), and
the features of a sample user and item as retrieval and ranking would read them → live traffic at a fixed
rate while ``recstream canary`` measures produce → readable per feature family (p50 / p99) → stop cleanly.
The trainer runs beside the worker throughout, so the embeddings family is measured too.
"""

from __future__ import annotations

import logging
import shutil
import time
import urllib.request
from collections import Counter
from pathlib import Path

import click
import redis

from filters.events import Event
from infra import services
from infra.settings import Settings
from infra.topics import ensure_topics
from recstream.demo_live import LiveResult, run_live
from recstream.generate import GeneratorConfig, write_dataset
from recstream.sources import read_jsonl_items, read_jsonl_valid
from serving.client import FeatureClient
from stream.lag import LagProbe
from stream.producer import EventProducer
from stream.worker_process import WorkerProcess

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
INVALID_SAMPLES = (b'{"event_id": "x", "type": "purchase"}', b"\x00\x01 not json", b'{"ts": "yesterday"}')


def demo_settings(base: Settings) -> Settings:
    """The demo's own data home under the configured one, so it never touches other state."""
    return base.model_copy(update={"home": base.home / "demo"})


def _section(title: str) -> None:
    click.secho(f"\n== {title} ", bold=True)


def _produce(settings: Settings, data_dir: Path) -> tuple[int, float, str, str]:
    """Replay the dataset; returns (events sent, seconds, the most active user, the most shown item)."""
    from tqdm import tqdm

    sent = 0
    by_user: Counter[str] = Counter()
    by_item: Counter[str] = Counter()
    started = time.perf_counter()
    with EventProducer(settings) as producer:
        for item in read_jsonl_items(data_dir / "items.jsonl"):
            producer.send_item(item)
        for event in tqdm(read_jsonl_valid(data_dir / "events.jsonl"), desc="replay", unit="ev"):
            producer.send(event)
            sent += 1
            by_item[event.item_id] += event.type == "impression"
            by_user[event.user_id] += event.type == "click"
        for bad in INVALID_SAMPLES:
            producer.send_raw(settings.kafka.events_topic, b"demo-bad", bad)
        producer.flush(120)
    return sent, time.perf_counter() - started, by_user.most_common(1)[0][0], by_item.most_common(1)[0][0]


def _freshness(settings: Settings, client: FeatureClient, user: str) -> float:
    """Produce one new click and time until the serving layer returns it."""
    event = Event(event_id=f"fresh-{time.time_ns()}", type="click", user_id=user, item_id="fresh-item",
                  ts=int(time.time() * 1000), category="news")
    started = time.perf_counter()
    with EventProducer(settings) as producer:
        producer.send(event)
        producer.flush(10)
    while time.perf_counter() - started < 30:
        if any(e.item_id == "fresh-item" for e in client.last_n(user, "click", n=5)):
            return time.perf_counter() - started
        time.sleep(0.01)
    return float("nan")


def _metrics_excerpt(port: int) -> list[str]:
    if not port:
        return []
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return ["(metrics endpoint not reachable)"]
    wanted = ("recstream_events_processed_total", "recstream_events_invalid_total",
              "recstream_duplicate_events_dropped_total", "recstream_late_events_dropped_total")
    return [line for line in text.splitlines() if line.startswith(wanted)]


def run_demo(base: Settings, users: int, items: int, days: int, events: int, rate: float = 5000.0,
             live_s: float = 30.0) -> None:
    """Run the demo end to end; raises a RecstreamError subclass on failure (the CLI prints it)."""
    settings = demo_settings(base)
    logging.getLogger("stream.producer").setLevel(logging.ERROR)  # transient librdkafka retries stay quiet
    services.down(settings)
    shutil.rmtree(settings.home, ignore_errors=True)
    _section("infra up: Kafka (KRaft, Maven Central jars) + Redis")
    with services.running(settings) as status:
        for service in status:
            click.echo("  " + service.describe())
        ensure_topics(settings)
        data_dir = settings.home / "data"
        _section(f"generate: {users} users, {items} items, {days} days, ~{events} events")
        end_ms = int(time.time() * 1000) // HOUR_MS * HOUR_MS  # ends at the last full hour: "live" data
        config = GeneratorConfig(users=users, items=items, days=days, events=events, seed=7,
                                 start_ms=end_ms - days * DAY_MS)
        write_dataset(config, data_dir)
        logs = settings.home / "logs"
        with WorkerProcess(settings, logs / "worker.log"), WorkerProcess(settings, logs / "trainer.log",
                                                                         args=("trainer",)):
            _section("replay into Kafka while the worker consumes")
            sent, produce_s, user, item = _produce(settings, data_dir)
            click.echo(f"  produced {sent} events (+{len(INVALID_SAMPLES)} invalid) in {produce_s:.1f} s")
            started = time.perf_counter()
            LagProbe(settings).wait_until_caught_up(900)
            total_s = produce_s + time.perf_counter() - started
            click.echo(f"  worker caught up: {sent / total_s:,.0f} events/s end to end")
            client = FeatureClient(settings.redis.effective_url, settings=settings)
            _show_features(settings, client, user, item)
            fresh = _freshness(settings, client, user)
            _section("freshness")
            click.echo(f"  a new click was served {fresh * 1000:.0f} ms after it was produced")
            _section(f"live traffic: {rate:,.0f} events/s for {live_s:.0f} s, a canary per partition every second")
            live = run_live(settings, users, items, rate, live_s, logs)
            click.echo(f"  sent {live.sent:,} events at {live.rate:,.0f} events/s (event time = wall clock)")
            _print_freshness(live)
            _section("worker metrics (Prometheus /metrics)")
            for line in _metrics_excerpt(settings.worker.metrics_port):
                click.echo("  " + line)
        _section("infra down")
    click.echo("demo finished: everything stopped.")


def _print_freshness(live: LiveResult) -> None:
    click.echo(f"  {'family':<11} {'probes':>6} {'p50 ms':>7} {'p99 ms':>7} {'misses':>6}   (produce -> readable)")
    for family, f in live.freshness.items():
        click.echo(f"  {family:<11} {f.probes:>6} {f.p50_s * 1000:>7.0f} {f.p99_s * 1000:>7.0f} {f.misses:>6}")
    if not live.freshness:
        click.echo("  (the canary finished no round while the traffic ran; see logs/canary.log)")


def _show_features(settings: Settings, client: FeatureClient, user: str, item: str) -> None:
    r = redis.Redis.from_url(settings.redis.effective_url)
    clicks = client.last_n(user, "click", n=5)
    _section(f"last-N clicks of {user} (newest first)")
    for e in clicks:
        click.echo(f"  {time.strftime('%Y-%m-%d %H:%M', time.gmtime(e.ts / 1000))}  {e.item_id:<8} "
                   f"{e.category or '-':<10} {e.author_id or '-'}")
    seen_items = [e.item_id for e in client.last_n(user, "click", n=5)]
    candidates = [*seen_items, "never-shown-1", "never-shown-2"]
    _section(f"exposure filter for {user}")
    click.echo(f"  candidates: {candidates}")
    click.echo(f"  unseen:     {client.filter_unseen(user, candidates)}")
    _section(f"statistics of user {user} and of item {item}")
    for kind, entity in (("user", user), ("item", item)):
        stats = client.stats(kind, entity)
        for window, values in stats.items():
            shown = ", ".join(f"{k}={v:.3g}" for k, v in values.items() if not k.startswith("log1p"))
            click.echo(f"  {kind:<4} {window:>3}: {shown}")
    click.echo(f"\n  redis memory used: {r.info('memory')['used_memory_human']}, keys: {r.dbsize()}")
