"""The demo's live phase: synthetic events stamped with the wall clock, sent at a fixed rate, while
``recstream canary`` probes every feature family; then the freshness each family reached.

The pacing and the summary are pure (table-tested); :func:`run_live` wires them to Kafka and the canary
process. :class:`Ticker` prints one line every few seconds during the replay and the live phase: events/s
(the worker's ``/metrics``), lag (:class:`~stream.lag.LagProbe`), freshness (the canary's last round; the
trainer's last publish) and the trainer's own prequential recall@10 / AUC (its ``/metrics``).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from filters.events import CANARY_FAMILIES, Event
from infra.errors import InfraError, KafkaError
from infra.settings import Settings
from recstream.generate import GeneratorConfig, World, generate_events
from stream.lag import LagProbe
from stream.producer import EventProducer
from stream.worker_process import WorkerProcess

__all__ = [
    "CANARY_ROUNDS",
    "PHASES",
    "FamilyFreshness",
    "LiveResult",
    "Tick",
    "Ticker",
    "family_delays",
    "freshness_table",
    "metric",
    "paced",
    "run_live",
    "wait_caught_up",
]

CANARY_ROUNDS = "canary.jsonl"  # the canary's --log-json file in the demo's log directory


def paced(events: Iterable[Event], rate: float, clock: Callable[[], float] = time.time,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[Event]:
    """``events`` at ``rate`` per second, each re-stamped with the wall clock (ms) when it is let through.

    >>> t = [100.0]
    >>> out = list(paced([Event(event_id=str(k), type="click", user_id="u", item_id="i", ts=0) for k in range(4)],
    ...                  rate=2, clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s)))
    >>> [e.ts for e in out]
    [100000, 100500, 101000, 101500]
    """
    start = None  # the first event's time: producing the first events may take a while
    for k, event in enumerate(events):
        start = clock() if start is None else start
        ahead = start + k / rate - clock()
        if ahead > 0:
            sleep(ahead)
        yield msgspec.structs.replace(event, ts=int(clock() * 1000))


@dataclass(frozen=True)
class FamilyFreshness:
    """Produce → readable delays of one family over the live phase."""

    probes: int
    misses: int
    p50_s: float
    p99_s: float


def family_delays(rounds: Iterable[dict[str, object]]) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Per family (in :data:`CANARY_FAMILIES` order): every delay (s) of the canary's ``--log-json`` lines,
    and the misses (probes sent but not readable within the canary's timeout; a round may send fewer probes
    than partitions, which is no miss)."""
    delays: dict[str, list[float]] = {}
    misses: dict[str, int] = {}
    for line in rounds:
        missed: dict[str, int] = line["missed"]  # type: ignore[assignment]
        for family, got in line["delays_s"].items():  # type: ignore[attr-defined]
            delays.setdefault(family, []).extend(got)
            misses[family] = misses.get(family, 0) + missed[family]
    order = sorted(delays, key=CANARY_FAMILIES.index)
    return {f: delays[f] for f in order}, misses


def freshness_table(rounds: Iterable[dict[str, object]]) -> dict[str, FamilyFreshness]:
    """Per family: probes, misses and p50/p99 delays, from the canary's ``--log-json`` lines.

    >>> t = freshness_table([{"delays_s": {"stats": [0.1, 0.3], "exposure": []}, "missed": {"stats": 0, "exposure": 0}},
    ...                      {"delays_s": {"stats": [0.2], "exposure": [0.4]}, "missed": {"stats": 1, "exposure": 0}}])
    >>> t["stats"].probes, t["stats"].misses, round(t["stats"].p50_s, 3), t["exposure"].probes, t["exposure"].misses
    (3, 1, 0.2, 1, 0)
    """
    delays, misses = family_delays(rounds)
    return {f: FamilyFreshness(len(d), misses[f], *(float(np.percentile(d, q)) if d else float("nan")
                                                     for q in (50, 99)))
            for f, d in delays.items()}


@dataclass(frozen=True)
class LiveResult:
    """What the live phase sent, when (epoch ms), and the freshness the canary measured under the load."""

    sent: int
    seconds: float
    freshness: dict[str, FamilyFreshness]
    delays: dict[str, list[float]]  # every delay (s) per family, for the histogram
    since_ms: int
    until_ms: int

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def wait_caught_up(settings: Settings, processes: Sequence[WorkerProcess], timeout_s: float,
                   restarts: int = 1) -> None:
    """:meth:`LagProbe.wait_until_caught_up`, restarting a dead one of ``processes`` (at most ``restarts``
    times in all: the pipeline resumes from what it committed) and failing with one line after that."""
    from tqdm import tqdm

    probe, deadline = LagProbe(settings), time.monotonic() + timeout_s
    while True:
        try:
            probe.wait_until_caught_up(5)
            return
        except KafkaError:
            for proc in processes:
                if proc.alive():
                    continue
                why = f"{proc.args[0]} exited with code {proc.stop()} while the demo waited; log: {proc.log_path}"
                if restarts <= 0:
                    raise InfraError(why) from None
                restarts -= 1
                tqdm.write(f"  {why}: restarting it")
                proc.start()
            if time.monotonic() > deadline:
                raise


def run_live(settings: Settings, world: World, rate: float, seconds: float, log_dir: Path,
             processes: Sequence[WorkerProcess] = (), quiet_user: str | None = None,
             inject: Callable[[int], list[Event]] | None = None, inject_at_s: float = 5.0) -> LiveResult:
    """Send ``rate × seconds`` live events of ``world``'s users and items (stamped with the wall clock) while
    a canary process probes every second; wait until the worker caught up, stop the canary, summarise the
    rounds that ended while the traffic ran.

    ``quiet_user``'s generated events are left out; ``inject(now_ms)``'s events are sent once, after
    ``inject_at_s`` seconds of traffic (the demo's story clicks, trained amid everyone else's)."""
    from tqdm import tqdm

    cfg = GeneratorConfig(users=world.cfg.users, items=world.cfg.items, days=seconds / 86_400,
                          events=int(rate * seconds), seed=8, start_ms=int(time.time() * 1000), dup_share=0.0,
                          late_share=0.0)
    rounds_file = log_dir / CANARY_ROUNDS
    rounds_file.unlink(missing_ok=True)
    args = ("canary", "--interval", "1", "--metrics-port", "0", "--timeout", "20", "--log-json", str(rounds_file))
    sent = 0
    with WorkerProcess(settings, log_dir / "canary.log", args=args):
        generated = (e for e in generate_events(cfg, world) if e.user_id != quiet_user)
        live = itertools.chain([next(generated)], generated)  # the first hour of events is generated at once
        time.sleep(2)  # a first canary round before the traffic starts
        started, since_ms = time.perf_counter(), int(time.time() * 1000)
        with EventProducer(settings) as producer:
            for event in tqdm(paced(live, rate), desc="live", unit="ev", total=cfg.events, disable=None,
                              mininterval=0.5):
                producer.send(event)
                sent += 1
                if inject is not None and time.perf_counter() - started >= inject_at_s:
                    for extra in inject(int(time.time() * 1000)):
                        producer.send(extra)
                    inject = None
            producer.flush(60)
        elapsed, until_ms = time.perf_counter() - started, int(time.time() * 1000)
        wait_caught_up(settings, processes, 300)
        time.sleep(1)
    lines = [json.loads(line) for line in rounds_file.read_text().splitlines()] if rounds_file.exists() else []
    during = [line for line in lines if since_ms < line["wall_ms"] <= until_ms]  # rounds that ended under load
    return LiveResult(sent, elapsed, freshness_table(during), family_delays(during)[0], since_ms, until_ms)


# --- the live lines ---------------------------------------------------------------------------------
def metric(text: str, name: str, agg: Callable[[list[float]], float] = sum, **labels: str) -> float | None:
    """``agg`` (sum) of the samples of ``name`` (matching ``labels``) in a Prometheus text page; None if none.

    >>> page = 'x_total{type="a"} 2.0\\nx_total{type="b"} 3.0\\ng{metric="auc"} 0.7\\n'
    >>> metric(page, "x_total"), metric(page, "x_total", agg=max), metric(page, "g", metric="auc")
    (5.0, 3.0, 0.7)
    >>> metric(page, "g", metric="mrr") is None
    True
    """
    values = [s.value for family in text_string_to_metric_families(text) for s in family.samples
              if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return float(agg(values)) if values else None


def _page(port: int) -> str:
    if not port:
        return ""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


@dataclass(frozen=True)
class Tick:
    """One live line: the pipeline as the demo saw it ``t_s`` seconds into its phases."""

    t_s: float
    phase: str
    events_s: float | None  # events the worker processed per second since the last tick that could read it
    lag: int | None  # source-topic records not consumed yet (LagProbe; a record batches several events)
    lag_s: float | None  # age of the oldest unprocessed record (the worker's own gauge)
    published_ago_s: float | None  # since the trainer's last publish
    fresh_s: dict[str, float]  # the canary's last finished round: median delay per family (live phase only)
    recall: float | None  # the trainer's prequential recall@10 (over its sliding window)
    auc: float | None

    def line(self) -> str:
        """The line as printed.

        >>> Tick(12.0, "live", 4980.0, 3, 0.4, 1.5, {"exposure": 0.12}, 0.031, None).line()[:74]
        '[live     12 s] 4,980 ev/s  lag 3 rec (0.4 s)  canary exposure 120 ms  pub'
        """
        rate = "-" if self.events_s is None else f"{self.events_s:,.0f}"
        lag = "-" if self.lag is None else f"{self.lag:,}"
        lag_s = "-" if self.lag_s is None else f"{self.lag_s:.1f} s"
        fresh = ", ".join(f"{f} {_ms(v)}" for f, v in self.fresh_s.items()) or "-"
        published = "-" if self.published_ago_s is None else f"{self.published_ago_s:.1f} s ago"
        return (f"[{self.phase:<6} {self.t_s:>4.0f} s] {rate} ev/s  lag {lag} rec ({lag_s})  canary {fresh}  "
                f"published {published}  recall@10 {_num(self.recall)}  auc {_num(self.auc)}")


def _last_round(path: Path) -> dict[str, float]:
    """Median delay per family of the canary's last round in ``path`` (empty if there is none)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    if not lines:
        return {}
    try:
        last = json.loads(lines[-1])
    except ValueError:  # a line being written
        return {}
    return {f: float(np.median(d)) for f, d in last.get("delays_s", {}).items() if d}


PHASES = ("replay", "live")


class _Reader:
    """Reads one :class:`Tick` at a time: the broker and the two ``/metrics`` pages are asked in threads and
    waited for at most ``wait_s`` (a busy worker answers its page late), so a line is never late; a read
    still running is waited on again by the next tick rather than asked twice."""

    def __init__(self, settings: Settings, rounds_file: Path, wait_s: float = 3.0) -> None:
        self.settings, self.rounds_file, self.wait_s = settings, rounds_file, wait_s
        self.probe = LagProbe(settings)
        self.started = time.monotonic()
        self.last: tuple[float, float] | None = None  # (monotonic, events processed) last read
        self.pool = ThreadPoolExecutor(3, thread_name_prefix="recstream-demo-read")
        self.pending: dict[str, Future[Any]] = {}

    def _ask(self, key: str, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        running = self.pending.get(key)
        if running is None or running.done():
            running = self.pending[key] = self.pool.submit(fn, *args)
        return running

    def _rate(self, processed: float | None, now: float) -> float | None:
        if processed is None:
            return None
        last, self.last = self.last, (now, processed)
        return None if last is None else max(0.0, (processed - last[1]) / (now - last[0]))

    def tick(self, phase: str) -> Tick:
        asked = {"lag": self._ask("lag", self.probe.read, self.wait_s),
                 "worker": self._ask("worker", _page, self.settings.worker.metrics_port),
                 "trainer": self._ask("trainer", _page, self.settings.learning.metrics_port)}
        wait(list(asked.values()), timeout=self.wait_s + 0.5)
        got = {k: f.result() if f.done() and f.exception() is None else None for k, f in asked.items()}
        now, worker, trainer = time.monotonic(), got["worker"] or "", got["trainer"] or ""
        published = metric(trainer, "recstream_trainer_last_publish_timestamp_seconds")
        return Tick(now - self.started, phase, self._rate(metric(worker, "recstream_events_processed_total"), now),
                    None if got["lag"] is None else sum(r.lag for r in got["lag"]),
                    metric(worker, "recstream_consumer_lag_seconds", agg=max),
                    None if not published else time.time() - published,
                    _last_round(self.rounds_file) if phase == "live" else {},
                    metric(trainer, "recstream_trainer_prequential", metric="recall@10"),
                    metric(trainer, "recstream_trainer_prequential", metric="auc"))


class Ticker:
    """A daemon thread appending a :class:`Tick` to :attr:`ticks` and printing its line (above the progress
    bar) every ``every_s`` seconds; the demo sets :attr:`phase`. An unread field shows ``-``."""

    def __init__(self, settings: Settings, log_dir: Path, every_s: float = 5.0,
                 write: Callable[[str], None] | None = None) -> None:
        from tqdm import tqdm

        self.write = write or tqdm.write
        self.phase = PHASES[0]
        self.ticks: list[Tick] = []
        self._reader = _Reader(settings, log_dir / CANARY_ROUNDS)
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="recstream-demo-ticker", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            tick = self._reader.tick(self.phase)
            self.ticks.append(tick)
            self.write("  " + tick.line())

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(15)
        self._reader.pool.shutdown(wait=False, cancel_futures=True)
