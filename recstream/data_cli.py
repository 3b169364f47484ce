"""``recstream produce`` and ``recstream generate`` (registered on the main group in ``recstream/cli.py``).

Errors (missing file, unreachable broker, bad line with ``--strict``) print ``error: ...`` on stderr
and exit non-zero; Ctrl-C flushes what was queued, prints the summary and exits 130.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import msgspec
from tqdm import tqdm

from filters.events import Event
from infra.errors import InputError
from recstream.cli_support import friendly_errors, settings_from_context
from recstream.generate import DAY_MS, HOUR_MS, GeneratorConfig, GenStats, write_dataset
from recstream.sources import (
    Rejects,
    mind_news_items,
    read_jsonl,
    read_jsonl_items,
    read_mind,
    scan,
    shift_to_now,
)
from stream.producer import EventProducer

__all__ = ["TokenBucket", "generate", "parse_start", "produce"]



class TokenBucket:
    """Rate limiter: ``rate`` tokens per second, bursts of at most ``burst`` (default: 1/100 s worth).

    Over any one-second window the number of acquisitions stays within ``rate + burst``.

    >>> now = [0.0]
    >>> bucket = TokenBucket(100, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    >>> for _ in range(300):
    ...     bucket.acquire()
    >>> round(now[0], 2)  # 300 tokens at 100/s, starting with a burst of 1
    2.99
    """

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            msg = f"rate must be > 0, got {rate}"
            raise InputError(msg)
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 100)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.burst
        self._last = clock()

    def acquire(self, n: float = 1.0) -> None:
        """Take ``n`` tokens, sleeping until they are available."""
        while True:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= n - 1e-9:  # tolerance: float rounding must not stall the loop
                self._tokens = max(0.0, self._tokens - n)
                return
            self._sleep((n - self._tokens) / self.rate)


def parse_start(text: str) -> int:
    """``--start``: epoch milliseconds or an ISO date/time (naive = UTC) → epoch ms.

    >>> parse_start("1700000000000"), parse_start("2023-11-14T22:13:20Z"), parse_start("2019-11-09")
    (1700000000000, 1700000000000, 1573257600000)
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        msg = f"--start {text!r}: expected epoch milliseconds or an ISO date like 2019-11-09T00:00"
        raise InputError(msg) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _require_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        msg = f"{what} not found: {path}" if not p.exists() else f"{what} is not a file: {path}"
        raise InputError(msg)
    return p


def _raw_lines(path: Path) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, line) for each non-blank line, unvalidated; the key is ``user_id``/``item_id`` if readable."""
    with open(path, "rb") as fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            key = None
            try:
                obj = msgspec.json.decode(line)
                if isinstance(obj, dict):
                    k = obj.get("user_id", obj.get("item_id"))
                    key = k.encode() if isinstance(k, str) else None
            except (msgspec.DecodeError, UnicodeDecodeError):
                pass
            yield key, line


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


@click.command()
@click.argument("file", metavar="FILE")
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "mind"]), default="auto",
              show_default=True, help="auto: .tsv = MIND behaviors, anything else = JSONL events.")
@click.option("--items", "items_path", metavar="ITEMS_JSONL", help="Item metadata to send first.")
@click.option("--news", "news_path", metavar="NEWS_TSV",
              help="MIND news.tsv (default: beside behaviors.tsv); its items are sent first.")
@click.option("--shift-to-now", is_flag=True, help="Shift timestamps so the newest event is now.")
@click.option("--rate", default=0.0, show_default=True, metavar="EV_PER_S",
              help="Events per second (0 = as fast as possible).")
@click.option("--strict", is_flag=True, help="Validate everything first; stop at the first bad line.")
@click.option("--raw", is_flag=True, help="Send lines unvalidated, as they are (dead-letter drills).")
@click.option("--connect-timeout", default=5.0, show_default=True, help="Seconds for the broker check.")
@click.pass_context
@friendly_errors
def produce(ctx: click.Context, file: str, fmt: str, items_path: str | None, news_path: str | None,
            shift_to_now: bool, rate: float, strict: bool, raw: bool, connect_timeout: float) -> None:
    """Send the events of FILE (JSONL or MIND behaviors.tsv) to the events topic."""
    path = _require_file(file, "events file")
    if fmt == "auto":
        fmt = "mind" if path.suffix == ".tsv" else "jsonl"
    items = _require_file(items_path, "items file") if items_path else None
    news = _require_file(news_path, "news file") if news_path else None
    if fmt == "mind" and news is None and (path.parent / "news.tsv").is_file():
        news = path.parent / "news.tsv"
    if raw and (fmt != "jsonl" or shift_to_now):
        msg = "--raw sends JSONL lines as they are; it cannot be combined with --format mind / --shift-to-now"
        raise InputError(msg)
    if rate < 0:
        msg = f"--rate must be >= 0, got {rate}"
        raise InputError(msg)
    settings = settings_from_context(ctx)
    rejects = Rejects()
    on_error = None if strict else rejects
    topic = settings.kafka.events_topic

    def open_events(handler: Any = on_error) -> Iterable[Event]:
        if fmt == "mind":
            return read_mind(path, news, on_error=handler)
        return read_jsonl(path, on_error=handler)

    with EventProducer(settings) as producer:
        producer.check_connection(timeout=connect_timeout)
        # Pre-scan: the total for the progress bar, the newest ts, and with --strict,
        # proof that every line is valid before anything is sent.
        total: int | None
        newest: int | None = None
        if raw:
            total = _count_lines(path)
        elif strict or shift_to_now or fmt == "mind":
            with tqdm(desc="scan", unit="ev", leave=False, disable=None) as bar:
                total, newest = scan(_tick(open_events(on_error if strict else Rejects()), bar))
        else:
            total = _count_lines(path)

        n_items = _send_items(producer, items, news, raw, on_error, settings.kafka.items_topic)
        bucket = TokenBucket(rate) if rate > 0 else None
        sent = 0
        started = time.monotonic()
        interrupted = False
        bar = tqdm(total=total, desc="produce", unit="ev", disable=None)
        try:
            if raw:
                for key, line in _raw_lines(path):
                    if bucket:
                        bucket.acquire()
                    producer.send_raw(topic, key, line)
                    sent += 1
                    bar.update()
            else:
                events = open_events()
                if shift_to_now:
                    events = shift_to_now_events(events, newest)
                for ev in events:
                    if bucket:
                        bucket.acquire()
                    producer.send(ev)
                    sent += 1
                    bar.update()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
        producer.flush(120)
    elapsed = time.monotonic() - started
    item_part = f" (+{n_items} items first)" if n_items else ""
    click.echo(f"sent {sent} events{item_part} to {topic} in {elapsed:.1f} s "
               f"({sent / elapsed if elapsed > 0 else 0:,.0f} events/s)")
    if rejects.total:
        click.echo(f"rejected {rejects.total} line(s): {rejects.summary()}")
        first = next(iter(rejects.first.values()))
        click.echo(f"  first: {first}")
    if interrupted:
        click.echo("interrupted", err=True)
        sys.exit(130)
    if sent == 0 and rejects.total:
        msg = f"no valid events in {path} (every line was rejected)"
        raise InputError(msg)


def shift_to_now_events(events: Iterable[Event], newest: int | None) -> Iterator[Event]:
    """Shift a stream whose newest ``ts`` is known to end at the current wall clock."""
    if newest is None:
        return iter(events)
    return shift_to_now(events, int(time.time() * 1000), max_ts=newest)


def _tick(events: Iterable[Event], bar: tqdm[Any]) -> Iterator[Event]:
    for ev in events:
        bar.update()
        yield ev


def _send_items(producer: EventProducer, items: Path | None, news: Path | None, raw: bool,
                on_error: Any, topic: str) -> int:
    """Send item metadata (JSONL file and/or MIND news) before the events; returns how many."""
    n = 0
    if items is not None:
        if raw:
            for key, line in _raw_lines(items):
                producer.send_raw(topic, key, line)
                n += 1
        else:
            for meta in read_jsonl_items(items, on_error=on_error):
                producer.send_item(meta)
                n += 1
    if news is not None:
        for meta in mind_news_items(news):
            producer.send_item(meta)
            n += 1
    if n:
        producer.flush(60)
    return n


@click.command()
@click.option("-o", "--out", "out_dir", default="generated", show_default=True,
              help="Output directory (events.jsonl, items.jsonl, manifest.json).")
@click.option("--users", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--items", default=5000, show_default=True, type=click.IntRange(min=1))
@click.option("--days", default=7.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--events", default=None, type=click.IntRange(min=1),
              help="Approximate number of events [default: rate-per-user x users x days].")
@click.option("--rate-per-user", default=30.0, show_default=True, help="Events per user per day.")
@click.option("--seed", default=0, show_default=True)
@click.option("--start", default=None, help="Epoch ms or ISO date [default: span ends at the last full hour]")
@friendly_errors
def generate(out_dir: str, users: int, items: int, days: float, events: int | None,
             rate_per_user: float, seed: int, start: str | None) -> None:
    """Write a synthetic, realistic event stream (deterministic for --seed and --start)."""
    if start is not None:
        start_ms = parse_start(start)
    else:  # end at the last full hour (never in the future); same seed = same data within the hour
        start_ms = (int(time.time() * 1000) // HOUR_MS) * HOUR_MS - int(days * DAY_MS)
    cfg = GeneratorConfig(users=users, items=items, days=days, events=events,
                          rate_per_user=rate_per_user, seed=seed, start_ms=start_ms)
    started = time.monotonic()
    with tqdm(total=cfg.target_events, desc="generate", unit="ev", disable=None) as bar:
        stats: GenStats = write_dataset(cfg, out_dir, progress=bar.update)
    elapsed = time.monotonic() - started
    types = ", ".join(f"{t} {n}" for t, n in stats.types.most_common())
    span = (f"{datetime.fromtimestamp(cfg.start_ms / 1000, UTC):%Y-%m-%d %H:%M} .. "
            f"{datetime.fromtimestamp(cfg.end_ms / 1000, UTC):%Y-%m-%d %H:%M} UTC")
    click.echo(f"wrote {stats.events} events ({types}; {stats.duplicates} duplicate deliveries, "
               f"{stats.late} late) and {stats.items} items to {out_dir}/ in {elapsed:.1f} s "
               f"({stats.events / elapsed if elapsed > 0 else 0:,.0f} events/s); span {span}")
