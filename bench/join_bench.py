"""Label join, live: impression → sample emission latency at a stated rate, and join state over time.

``python -m bench.join_bench [--rate 2000] [--seconds 60]`` starts a private broker + Redis and one
``recstream worker`` (short windows so that windows close during the run: click 2 s, the other actions
4 s, allowed lateness 1 s), then produces live traffic at ``--rate`` events/s with event ts = now:
impressions, and for a share of them a click 0–1.5 s later (request ids carried). A consumer reads the
samples topic meanwhile. Latency:

- ``positive``: arrival on the samples topic − the click's ts (the click is produced at its ts);
- ``impression``: arrival − (impression ts + longest window + allowed lateness), the earliest wall time
  any watermark could close its window (so this is the join's own delay beyond the window).

Join state: ``recstream_join_open`` and ``recstream_join_state_bytes`` scraped from the worker's /metrics
every second; bounded means the second half of the run holds no more than the first half once the
windows are full. Writes ``join.json`` / ``join.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import heapq
import random
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Consumer

from bench.common import free_port, percentiles, private_services, with_sections, write_results
from filters.events import Event
from filters.labels import Sample
from filters.sample_records import decode_samples
from infra.settings import Settings
from infra.topics import ensure_topics
from recstream.data_cli import TokenBucket
from stream.lag import LagProbe
from stream.producer import EventProducer
from stream.worker_process import WorkerProcess

WINDOWS = {"click": 2_000, "like": 4_000, "collect": 4_000, "share": 4_000, "comment": 4_000}
LATENESS_MS = 1_000


def _produce(settings: Settings, load: dict[str, float], stop: threading.Event) -> int:
    """Live events for ``seconds`` at ``rate``/s: impressions, and clicks on some of them 0–1.5 s later."""
    rng, bucket, users = random.Random(7), TokenBucket(load["rate"]), int(load["users"])
    pending: list[tuple[int, int, Event]] = []
    sent, k, end = 0, 0, time.monotonic() + load["seconds"]
    with EventProducer(settings) as producer:
        while time.monotonic() < end and not stop.is_set():
            bucket.acquire()
            now = int(time.time() * 1000)
            if pending and pending[0][0] <= now:
                _, _, click = heapq.heappop(pending)
                producer.send(msgspec.structs.replace(click, ts=now))
            else:
                k += 1
                user, item = f"u{rng.randrange(users)}", f"i{rng.randrange(5000)}"
                producer.send(Event(event_id=f"imp{k}", type="impression", user_id=user, item_id=item, ts=now,
                                    request_id=f"r{k}", position=rng.randrange(20)))
                if rng.random() < load["click_share"]:
                    click = Event(event_id=f"clk{k}", type="click", user_id=user, item_id=item, ts=now,
                                  request_id=f"r{k}")
                    heapq.heappush(pending, (now + rng.randrange(1500), k, click))
            sent += 1
            producer.poll()
    return sent


_SCRAPED = {  # series key -> (metric, a label it must carry or "")
    "open_impressions": ("recstream_join_open", 'kind="impressions"'),
    "state_bytes": ("recstream_join_state_bytes", ""),
    "freshness_sum": ("recstream_event_to_feature_seconds_sum", 'agent="ingest"'),
    "freshness_count": ("recstream_event_to_feature_seconds_count", 'agent="ingest"'),
}


def _scrape(port: int) -> dict[str, float]:
    """The worker's join state and event → feature freshness, from its /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    out = {}
    for key, (name, label) in _SCRAPED.items():
        m = re.search(rf"^{name}(?:\{{[^}}]*{label}[^}}]*\}})? ([0-9.e+]+)$", text, re.M)
        out[key] = float(m.group(1)) if m else 0.0
    return out


def _consume(settings: Settings, stop: threading.Event, arrivals: list[tuple[float, Sample]]) -> None:
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": "bench-join-latency",
                         "auto.offset.reset": "earliest", "broker.address.family": "v4"})
    consumer.subscribe([settings.kafka.samples_topic])
    while not stop.is_set():
        for m in consumer.consume(500, timeout=0.2):
            if m.error() is None and m.value() is not None:
                now = time.time() * 1000
                arrivals += [(now, s) for s in decode_samples(m.value())]
    consumer.close()


def run(load: dict[str, float]) -> dict[str, Any]:
    """One live run; returns latencies (ms) per kind and the state series."""
    with private_services() as base:
        port = free_port()
        settings = with_sections(base, join={"windows_ms": WINDOWS}, stats={"allowed_lateness_ms": LATENESS_MS},
                                 worker={"metrics_port": port})
        ensure_topics(settings)
        stop = threading.Event()
        arrivals: list[tuple[float, Sample]] = []
        series: list[dict[str, float]] = []
        with WorkerProcess(settings, settings.home / "logs" / "worker.log"):
            reader = threading.Thread(target=_consume, args=(settings, stop, arrivals), daemon=True)
            reader.start()
            producer_done: list[int] = []
            writer = threading.Thread(target=lambda: producer_done.append(
                _produce(settings, load, stop)), daemon=True)
            started = time.monotonic()
            writer.start()
            while writer.is_alive():
                time.sleep(1.0)
                series.append({"t_s": round(time.monotonic() - started, 1), **_scrape(port)})
            LagProbe(settings).wait_until_caught_up(120)
            time.sleep(2.0)
            stop.set()
            reader.join(10)
    wmax = max(WINDOWS.values())
    lat: dict[str, list[float]] = {"positive": [], "impression": []}
    for at, s in arrivals:
        due = s.ts if s.kind == "positive" else s.impression_ts + wmax + LATENESS_MS
        lat[s.kind].append(max(0.0, at - due) / 1000)
    return {**load, "events": producer_done[0] if producer_done else 0,
            "latency": {k: percentiles(v) | {"n": len(v)} for k, v in lat.items() if v}, "state": series}


def _table(res: dict[str, Any]) -> list[list[str]]:
    rows = [["measure", "value"]]
    for kind, p in res["latency"].items():
        rows.append([f"{kind} samples: emission latency p50 / p99 (n)",
                     f"{p['p50_us'] / 1000:,.0f} ms / {p['p99_us'] / 1000:,.0f} ms ({p['n']:,})"])
    series = res["state"]
    half = len(series) // 2
    for key, label in (("open_impressions", "open impressions"), ("state_bytes", "join state bytes")):
        first = max((s[key] for s in series[:half]), default=0)
        second = max((s[key] for s in series[half:]), default=0)
        rows.append([f"{label}: max in the first / second half of the run", f"{first:,.0f} / {second:,.0f}"])
    for s in series[len(series) // 6 - 1::len(series) // 6] if len(series) >= 6 else []:
        rows.append([f"open impressions / join state bytes at t = {s['t_s']:.0f} s",
                     f"{s['open_impressions']:,.0f} / {s['state_bytes']:,.0f}"])
    last = series[-1] if series else {}
    fresh = last.get("freshness_sum", 0.0) / max(1.0, last.get("freshness_count", 0.0))
    rows.append(["mean event → features written (the worker's own freshness metric)", f"{fresh * 1000:,.0f} ms"])
    rows.append(["events produced", f"{res['events']:,} at {res['rate']:,.0f}/s for {res['seconds']:.0f} s, "
                 f"{res['users']:,.0f} users, {res['click_share']:.0%} of impressions clicked"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second (impressions + clicks)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--click-share", type=float, default=0.1, help="share of impressions clicked")
    parser.add_argument("--users", type=int, default=2000, help="distinct users (fewer fill click logs sooner)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    res = run({"rate": args.rate, "seconds": args.seconds, "click_share": args.click_share, "users": args.users})
    md = write_results(args.out, "join", res, _table(res))
    print(md.read_text())


if __name__ == "__main__":
    main()
