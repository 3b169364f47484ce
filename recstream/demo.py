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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
import redis

from filters.events import Event
from infra import services
from infra.settings import Settings
from infra.topics import ensure_topics
from online_learning.learner import Learner
from recstream.demo_live import LiveResult, Tick, Ticker, run_live, wait_caught_up
from recstream.demo_report import ReportData, build_report, screenshot
from recstream.demo_story import (
    REGIMES,
    TOP_K,
    Curves,
    Story,
    StoryPlan,
    finish_story,
    online_vs_frozen,
    plan_story,
    read_samples,
    snapshot_model,
    wait_first_publish,
    with_replica,
)
from recstream.generate import GeneratorConfig, World, write_dataset
from recstream.sources import read_jsonl_items, read_jsonl_valid
from serving.client import FeatureClient
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


@dataclass
class Replay:
    """What the replay sent: counts, the most active user and most shown item, and what the story needs."""

    sent: int = 0
    seconds: float = 0.0
    catalogue: dict[str, str] = field(default_factory=dict)  # item id -> category (item metadata)
    clicks: Counter[str] = field(default_factory=Counter)  # per user
    shown: Counter[str] = field(default_factory=Counter)  # impressions per item
    user_categories: dict[str, Counter[str]] = field(default_factory=dict)  # per user: clicks per category

    @property
    def user(self) -> str:
        return self.clicks.most_common(1)[0][0]

    @property
    def item(self) -> str:
        return self.shown.most_common(1)[0][0]


def _produce(settings: Settings, data_dir: Path) -> Replay:
    """Replay the dataset into Kafka, counting what the rest of the demo needs."""
    from tqdm import tqdm

    out = Replay()
    started = time.perf_counter()
    with EventProducer(settings) as producer:
        for meta in read_jsonl_items(data_dir / "items.jsonl"):
            producer.send_item(meta)
            out.catalogue[meta.item_id] = meta.category or "?"
        for event in tqdm(read_jsonl_valid(data_dir / "events.jsonl"), desc="replay", unit="ev", disable=None,
                          mininterval=0.5):
            producer.send(event)
            out.sent += 1
            if event.type == "impression":
                out.shown[event.item_id] += 1
            elif event.type == "click":
                out.clicks[event.user_id] += 1
                category = out.catalogue.get(event.item_id, "?")
                out.user_categories.setdefault(event.user_id, Counter())[category] += 1
        for bad in INVALID_SAMPLES:
            producer.send_raw(settings.kafka.events_topic, b"demo-bad", bad)
        producer.flush(120)
    out.seconds = time.perf_counter() - started
    return out


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
             live_s: float = 30.0, report_dir: Path | None = None) -> None:
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
        with WorkerProcess(settings, logs / "worker.log") as worker, \
                WorkerProcess(settings, logs / "trainer.log", args=("trainer",)) as trainer, \
                Ticker(settings, logs) as ticker:
            processes = (worker, trainer)
            data = _replay_phase(settings, data_dir, processes)
            _section(f"learning, one user: top-{TOP_K} now; clicks on a new category go out amid the live traffic")
            plan = plan_story(settings, data.replay.user, data.replay.catalogue,
                              data.replay.user_categories.get(data.replay.user, Counter()), data.replay.shown)
            click.echo(f"  user {plan.user}: {plan.category!r} clicked {plan.clicks_before}x in the replay; "
                       f"{len(plan.items)} of its items will be shown + clicked: {', '.join(plan.items)}")
            ticker.phase = "live"
            data.live, data.curves, learners = _live_phase(settings, data.replay, World(config), rate, live_s, logs,
                                                           plan, processes)
            _section(f"learning, one user: top-{TOP_K} before and after the clicks")
            story = with_replica(settings, finish_story(settings, plan), learners, data.replay.catalogue)
            _print_story(story)
            _section("worker metrics (Prometheus /metrics)")
            for line in _metrics_excerpt(settings.worker.metrics_port):
                click.echo("  " + line)
        _section("infra down")
    data.story, data.ticks = story, ticker.ticks
    _report(data, report_dir or Path.cwd() / "demo-report", rate)
    click.echo("demo finished: everything stopped.")


@dataclass
class _Run:
    """What the phases measured, for the report."""

    replay: Replay
    caught_up_s: float
    fresh_s: float
    live: LiveResult | None = None
    curves: Curves | None = None
    story: Story | None = None
    ticks: list[Tick] = field(default_factory=list)


def _replay_phase(settings: Settings, data_dir: Path, processes: Sequence[WorkerProcess]) -> _Run:
    _section("replay into Kafka while the worker consumes (a live line every 5 s)")
    replay = _produce(settings, data_dir)
    click.echo(f"  produced {replay.sent} events (+{len(INVALID_SAMPLES)} invalid) in {replay.seconds:.1f} s")
    started = time.perf_counter()
    wait_caught_up(settings, processes, 900)
    total_s = replay.seconds + time.perf_counter() - started
    click.echo(f"  worker caught up: {replay.sent / total_s:,.0f} events/s end to end")
    client = FeatureClient(settings.redis.effective_url, settings=settings)
    trained = wait_first_publish(settings, client, 90)
    click.echo(f"  trainer: {trained:,} positives trained and published" if trained else
               "  trainer: nothing published within 90 s (recommendations below come from the initial model)")
    _show_features(settings, client, replay.user, replay.item)
    fresh = _freshness(settings, client, replay.user)
    client.close()
    _section("freshness")
    click.echo(f"  a new click was served {fresh * 1000:.0f} ms after it was produced")
    return _Run(replay, replay.sent / total_s, fresh)


def _live_phase(settings: Settings, replay: Replay, world: World, rate: float, live_s: float, logs: Path,
                plan: StoryPlan, processes: Sequence[WorkerProcess]) -> tuple[LiveResult, Curves, dict[str, Learner]]:
    """Snapshot the model (the frozen baseline), run the live traffic (the replay's world; the story user
    quiet but for the story's clicks, 5 s in), then test online vs frozen on it."""
    client = FeatureClient(settings.redis.effective_url, settings=settings)
    frozen = logs / "frozen.pt"
    version = snapshot_model(settings, client, frozen, replay.catalogue)
    client.close()
    _section(f"live traffic: {rate:,.0f} events/s for {live_s:.0f} s, a canary per partition every second")
    live = run_live(settings, world, rate, live_s, logs, processes, quiet_user=plan.user, inject=plan.produce)
    click.echo(f"  sent {live.sent:,} events at {live.rate:,.0f} events/s (event time = wall clock)")
    _print_freshness(live)
    _section(f"online vs frozen ({version} as published when the live phase started), prequential")
    curves, learners = online_vs_frozen(settings, frozen, read_samples(settings, live.since_ms), live.since_ms,
                                        plan.user)
    click.echo(f"  {'regime':<7} {f'recall@{TOP_K}':>10} {'MRR':>7}   ({curves.seconds.size:,} live positives, "
               f"tested before the online copy trains on them)")
    for regime in REGIMES:
        click.echo(f"  {regime:<7} {_num(curves.mean('hits', regime)):>10} {_num(curves.mean('rr', regime)):>7}")
    if not curves.impressions:
        click.echo("  AUC: no impression sample closed during the live phase (their click window is 30 min)")
    return live, curves, learners


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _print_story(story: Story) -> None:
    click.echo(f"  AFTER read {story.waited_s:.1f} s after the clicks were produced (trainer published them, "
               f"exposure filter has them: {'yes' if story.published else 'NO'}); it also reflects the live "
               "phase's training on everyone else's clicks")
    click.echo(f"  {'#':>3}  {'before':<10} {'category':<9} {'score':>6}   {'after':<10} {'category':<9} {'score':>6}")
    for k in range(max(len(story.before), len(story.after))):
        cells = []
        for ranked in (story.before, story.after):
            item, score = ranked[k] if k < len(ranked) else ("", float("nan"))
            cat = story.categories.get(item, "")
            mark = "*" if cat == story.category else " "
            cells.append(f"{item:<10} {cat:<8}{mark} {score:>6.2f}")
        click.echo(f"  {k + 1:>3}  {cells[0]}   {cells[1]}")
    click.echo(f"  (a) list changed: {'yes' if story.changed else 'no'}   (b) clicked items in AFTER: "
               f"{', '.join(story.leaked) or 'none (exposure filter)'}   (c) {story.category} items: "
               f"{story.in_category(story.before)} before -> {story.in_category(story.after)} after")
    click.echo(f"  {story.verdict()}")


def _report(run: _Run, out_dir: Path, rate: float) -> None:
    """Write the HTML report, then check it renders in headless Chromium."""
    _section("report")
    facts = [("replayed", f"{run.replay.sent:,} events in {run.replay.seconds:.1f} s; caught up at "
                          f"{run.caught_up_s:,.0f} events/s end to end"),
             ("a new click served after", f"{run.fresh_s * 1000:.0f} ms (quiet system)")]
    if run.live is not None:
        facts.append(("live traffic", f"{run.live.sent:,} events at {run.live.rate:,.0f} events/s "
                                      f"(target {rate:,.0f}) for {run.live.seconds:.0f} s"))
    data = ReportData(facts, run.ticks, run.live.delays if run.live else {}, run.live.freshness if run.live else {},
                      run.curves, run.story)
    page = build_report(data, out_dir)
    click.echo(f"  {page}")
    png = out_dir / "screenshot.png"
    png.unlink(missing_ok=True)
    problem = screenshot(page, png)
    if problem is None:
        click.echo(f"  rendered in headless Chromium, not blank: {png}")
    else:
        click.echo(f"  render check skipped: {problem}")


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
