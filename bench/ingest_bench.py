"""``recstream bench ingest``: producer, raw consumer, Faust pass-through and full worker, side by side.

All four run in one process tree on the same private broker and Redis, over the same synthetic events:

1. producer events/s — :class:`stream.producer.EventProducer` (confluent-kafka, idempotent, lz4);
2. raw consumer events/s — a confluent-kafka consumer, no decoding (the ceiling);
3. Faust pass-through events/s — the worker's agent shape (take_events, concurrency 1) + decode/validate;
4. full worker events/s — ``recstream worker`` with every feature on (Bloom, last-N, tiles, item/author
   stages), measured from the first produced event until the consumer group caught up.

Ratios, not absolutes, are the result: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic
from tqdm import tqdm

from bench.common import private_services, write_results
from filters.events import encode
from infra.settings import Settings
from recstream.generate import GeneratorConfig, generate_events
from stream.lag import LagProbe
from stream.producer import EventProducer
from stream.worker_process import WorkerProcess


def synthetic_payloads(n: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    """n (key, value) pairs from the synthetic generator, encoded as they travel on the wire."""
    cfg = GeneratorConfig(users=max(100, n // 50), items=max(500, n // 20), days=2, events=n, seed=seed)
    out: list[tuple[bytes, bytes]] = []
    for event in generate_events(cfg):
        out.append((event.user_id.encode(), encode(event)))
        if len(out) == n:
            break
    return out


def _create_topic(settings: Settings, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap, "broker.address.family": "v4"})
    for f in admin.create_topics([NewTopic(name, settings.kafka.partitions, 1)]).values():
        f.result()


def bench_producer(settings: Settings, topic: str, payloads: Sequence[tuple[bytes, bytes]]) -> float:
    with EventProducer(settings) as producer:
        started = time.perf_counter()
        for key, value in tqdm(payloads, desc="produce", unit="ev", leave=False):
            producer.send_raw(topic, key, value)
        producer.flush(120)
        return len(payloads) / (time.perf_counter() - started)


def bench_raw_consumer(settings: Settings, topic: str, n: int) -> float:
    consumer = Consumer({
        "bootstrap.servers": settings.kafka.bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False, "broker.address.family": "v4",
    })
    consumer.subscribe([topic])
    seen, first, first_batch = 0, 0.0, 0
    deadline = time.monotonic() + 300
    while seen < n and time.monotonic() < deadline:
        msgs = consumer.consume(num_messages=500, timeout=1.0)
        got = sum(1 for m in msgs if not m.error())
        if got and not first:
            first, first_batch = time.perf_counter(), got
        seen += got
    elapsed = time.perf_counter() - first
    consumer.close()
    return (seen - first_batch) / elapsed


def bench_faust_passthrough(settings: Settings, topic: str, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench.faust_passthrough", "--bootstrap", settings.kafka.bootstrap,
               "--topic", topic, "--expect", str(n), "--out", str(out),
               "--partitions", str(settings.kafka.partitions), "--datadir", tmp,
               "--batch", str(settings.worker.batch_size)]
        subprocess.run(cmd, timeout=600, check=False, capture_output=True)
        if not out.exists():
            msg = "the Faust pass-through worker did not finish"
            raise RuntimeError(msg)
        result = json.loads(out.read_text())
    return float(result["timed"]) / (result["last_ts"] - result["first_ts"])


def bench_worker(settings: Settings, payloads: Sequence[tuple[bytes, bytes]]) -> float:
    """Full pipeline: worker running first, then the payloads produced as fast as possible."""
    probe = LagProbe(settings)
    with WorkerProcess(settings, settings.home / "logs" / "bench-worker.log", loglevel="warning"):
        with EventProducer(settings) as producer:  # warm-up: group joined, scripts loaded
            producer.send_raw(settings.kafka.events_topic, *payloads[0])
            producer.flush(30)
        probe.wait_until_caught_up(120)
        started = time.perf_counter()
        with EventProducer(settings) as producer:
            for key, value in payloads[1:]:
                producer.send_raw(settings.kafka.events_topic, key, value)
            producer.flush(120)
        probe.wait_until_caught_up(1200, poll_s=0.2)
        return (len(payloads) - 1) / (time.perf_counter() - started)


def run(n: int, worker_n: int, out_dir: Path) -> dict[str, Any]:
    payloads = synthetic_payloads(max(n, worker_n))
    n, worker_n = min(n, len(payloads)), min(worker_n, len(payloads))
    with private_services() as settings:
        topic = "bench-ingest"
        _create_topic(settings, topic)
        print(f"ingest bench: {n} events on {settings.kafka.partitions} partitions ...", flush=True)
        producer = bench_producer(settings, topic, payloads[:n])
        raw = bench_raw_consumer(settings, topic, n)
        faust_rate = bench_faust_passthrough(settings, topic, n)
        worker = bench_worker(settings, payloads[:worker_n])
    results = {
        "events": n, "worker_events": worker_n,
        "producer_eps": producer, "raw_consumer_eps": raw, "faust_passthrough_eps": faust_rate,
        "worker_all_features_eps": worker,
        "ratios": {
            "raw_consumer_over_producer": raw / producer,
            "faust_over_raw_consumer": faust_rate / raw,
            "worker_over_faust_passthrough": worker / faust_rate,
        },
    }
    table = [
        ["stage", "events/s", "ratio"],
        ["producer (confluent, idempotent, lz4)", f"{producer:,.0f}", "1.00 (reference)"],
        ["raw consumer (confluent, no decode)", f"{raw:,.0f}", f"{raw / producer:.2f} × producer"],
        ["Faust pass-through (decode + validate)", f"{faust_rate:,.0f}", f"{faust_rate / raw:.3f} × raw consumer"],
        ["worker, all features (Redis writes)", f"{worker:,.0f}", f"{worker / faust_rate:.3f} × Faust pass-through"],
    ]
    md = write_results(out_dir, "ingest", results, table)
    print(md.read_text())
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--worker-events", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    run(args.events, args.worker_events, args.out)


if __name__ == "__main__":
    main()
