"""The demo's live phase: synthetic events stamped with the wall clock, sent at a fixed rate, while
``recstream canary`` probes every feature family; then the freshness each family reached.

The pacing and the summary are pure (table-tested); :func:`run_live` wires them to Kafka and the canary
process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from filters.events import CANARY_FAMILIES, Event
from infra.settings import Settings
from recstream.generate import GeneratorConfig, generate_events
from stream.lag import LagProbe
from stream.producer import EventProducer
from stream.worker_process import WorkerProcess

__all__ = ["FamilyFreshness", "LiveResult", "freshness_table", "paced", "run_live"]


def paced(events: Iterable[Event], rate: float, clock: Callable[[], float] = time.time,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[Event]:
    """``events`` at ``rate`` per second, each re-stamped with the wall clock (ms) when it is let through.

    >>> t = [100.0]
    >>> out = list(paced([Event(event_id=str(k), type="click", user_id="u", item_id="i", ts=0) for k in range(4)],
    ...                  rate=2, clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s)))
    >>> [e.ts for e in out]
    [100000, 100500, 101000, 101500]
    """
    start = clock()
    for k, event in enumerate(events):
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


def freshness_table(rounds: Iterable[dict[str, object]]) -> dict[str, FamilyFreshness]:
    """Per family: probes, misses (a partition's probe that never became readable) and p50/p99 delays, from
    the canary's ``--log-json`` lines.

    >>> t = freshness_table([{"partitions": 2, "delays_s": {"stats": [0.1, 0.3]}},
    ...                      {"partitions": 2, "delays_s": {"stats": [0.2]}}])
    >>> t["stats"].probes, t["stats"].misses, round(t["stats"].p50_s, 3)
    (3, 1, 0.2)
    """
    delays: dict[str, list[float]] = {}
    misses: dict[str, int] = {}
    for line in rounds:
        partitions = int(line["partitions"])  # type: ignore[call-overload]
        for family, got in line["delays_s"].items():  # type: ignore[attr-defined]
            delays.setdefault(family, []).extend(got)
            misses[family] = misses.get(family, 0) + max(0, partitions - len(got))
    return {f: FamilyFreshness(len(d), misses[f], *(float(np.percentile(d, q)) if d else float("nan")
                                                     for q in (50, 99)))
            for f, d in sorted(delays.items(), key=lambda kv: CANARY_FAMILIES.index(kv[0]))}


@dataclass(frozen=True)
class LiveResult:
    sent: int
    seconds: float
    freshness: dict[str, FamilyFreshness]

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def run_live(settings: Settings, users: int, items: int, rate: float, seconds: float,
             log_dir: Path) -> LiveResult:
    """Send ``rate × seconds`` live events while a canary process probes every second; wait until the
    worker caught up, stop the canary, summarise the rounds that ended while the traffic ran."""
    from tqdm import tqdm

    cfg = GeneratorConfig(users=users, items=items, days=seconds / 86_400, events=int(rate * seconds), seed=8,
                          start_ms=int(time.time() * 1000), dup_share=0.0, late_share=0.0)
    rounds_file = log_dir / "canary.jsonl"
    rounds_file.unlink(missing_ok=True)
    args = ("canary", "--interval", "1", "--metrics-port", "0", "--timeout", "20", "--log-json", str(rounds_file))
    sent = 0
    with WorkerProcess(settings, log_dir / "canary.log", args=args):
        time.sleep(2)  # a first canary round before the traffic starts
        started, since_ms = time.perf_counter(), int(time.time() * 1000)
        with EventProducer(settings) as producer:
            for event in tqdm(paced(generate_events(cfg), rate), desc="live", unit="ev", total=cfg.events):
                producer.send(event)
                sent += 1
            producer.flush(60)
        elapsed, until_ms = time.perf_counter() - started, int(time.time() * 1000)
        LagProbe(settings).wait_until_caught_up(300)
        time.sleep(1)
    lines = [json.loads(line) for line in rounds_file.read_text().splitlines()] if rounds_file.exists() else []
    during = [line for line in lines if since_ms < line["wall_ms"] <= until_ms]  # rounds that ended under load
    return LiveResult(sent, elapsed, freshness_table(during))
