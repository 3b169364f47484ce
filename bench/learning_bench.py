"""Online learning, measured: trainer samples/s from Kafka, publish time, serving's numpy user vector,
and how soon a click changes the user's published embedding.

``python -m bench.learning_bench [--samples 200000] [--rows 100000] [--rate 1000] [--probes 30]``
(``recstream bench learning``) starts a private broker + Redis and measures, in one run:

- ``throughput``: positives (history of up to 50 items, 100k users × 50k items) produced to the samples
  topic, then consumed by an in-process :class:`~online_learning.trainer.Trainer` at batch 1,024 —
  decode, dedup, prequential ranking of 256 per batch, sparse training, publishing every 5 s — until all
  are trained; beside it, in the same run, the raw ``train_step`` rate on the same batches (no Kafka, no
  dedup, no evaluation) and the rate of only reading + decoding the topic;
- ``publish``: :meth:`ModelPublisher.publish_delta` of ``--rows`` touched rows (2/3 users, 1/3 items + their vectors),
  median of 11 (the AOF rewrites Redis forks meanwhile are counted: each publish appends ~20 MB);
- ``reads``: ``FeatureClient.user_vector`` (two round trips + the numpy towers) and ``score`` of 100
  items, p50 / p99;
- ``click``: a worker and a trainer process on live traffic at ``--rate`` events/s; probe users click
  a new item and the time until ``user_embedding`` changes is taken (goal: ≤ publish period + 2 s).
Writes ``learning.json`` / ``learning.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch

from bench.common import percentiles, private_services, with_sections, write_results
from filters.labels import Sample
from filters.sample_records import decode_samples, encode_sample
from infra.gc_tuning import tune_gc
from infra.settings import Settings
from infra.topics import ensure_topics
from online_learning.learner import Learner
from online_learning.publish import Family, ModelPublisher, Rows
from online_learning.source import SampleRecord, SampleSource
from online_learning.trainer import Trainer, records_per_poll
from stream.producer import EventProducer


def synthetic_positives(n: int, users: int = 100_000, items: int = 50_000, seed: int = 1) -> list[Sample]:
    """Positives whose histories are the user's previous clicks (≤ 50), Zipf-ish item popularity."""
    rng = np.random.default_rng(seed)
    user_of = rng.integers(0, users, n)
    item_of = np.minimum(rng.zipf(1.2, n) - 1, items - 1)
    clicks: dict[int, list[str]] = {}
    out = []
    for k in range(n):
        u, item = int(user_of[k]), f"i{int(item_of[k])}"
        past = clicks.setdefault(u, [])
        out.append(Sample(kind="positive", sample_id=f"s1-b{k}", user_id=f"u{u}", item_id=item, request_id=None,
                          impression_ts=1_700_000_000_000 + k, ts=1_700_000_000_000 + k,
                          category=f"c{int(item_of[k]) % 40}", author_id=None, history=past[-50:][::-1],
                          alpha=1.0))
        past.append(item)
    return out


def _produce(settings: Settings, samples: list[Sample]) -> None:
    with EventProducer(settings) as producer:
        for k in range(0, len(samples), 10_000):
            chunk = samples[k:k + 10_000]
            producer.send_packed(settings.kafka.samples_topic, [(s.user_id, s) for s in chunk],
                                 settings.join.samples_per_record, encode_sample)
            producer.poll()
        producer.flush(120)


def _first_records(source: SampleSource, per_poll: int) -> list[SampleRecord]:
    """Poll until the group has joined and the first records arrive (the join is not timed: ~3 s here)."""
    while True:
        records = source.poll(per_poll, 0.5)
        if records:
            return records


def _consume_only(settings: Settings, n: int) -> float:
    """Read + decode samples/s, timed from the first records read."""
    source = SampleSource(settings, group="bench-decode-only")
    per_poll = records_per_poll(settings)  # records of ~5,000 samples, as the trainer polls
    records = _first_records(source, per_poll)
    started, got = time.perf_counter(), 0
    while True:
        got += sum(len(decode_samples(r.value)) for r in records)
        if got >= n:
            break
        records = source.poll(per_poll, 0.5)
    source.close()
    return n / (time.perf_counter() - started)


def _trainer_rate(settings: Settings, client: redis.Redis, n: int) -> dict[str, float]:
    """The trainer's loop (as ``run_trainer``), timed from the first records read."""
    source = SampleSource(settings)
    trainer = Trainer(settings, client, source)
    per_poll = records_per_poll(settings)
    records = _first_records(source, per_poll)
    started, cpu = time.perf_counter(), time.process_time()
    while True:
        trainer.handle(records)
        if trainer.due():
            trainer.publish()
        if trainer.learner.trained + len(trainer.buffer) >= n:
            break
        records = source.poll(per_poll, timeout_s=0.5)
    trainer.publish()
    wall = time.perf_counter() - started
    source.close()
    return {"samples_per_s": n / wall, "cpu_us_per_sample": (time.process_time() - cpu) / n * 1e6,
            "publishes": trainer.manifest.publishes}


def _raw_rate(settings: Settings, samples: list[Sample]) -> float:
    learner = Learner.fresh(settings.learning)
    size = settings.learning.batch_size
    for k in range(0, min(len(samples), 20 * size), size):  # admit the ids first: steady-state steps
        learner.train(samples[k:k + size])
    started, done = time.perf_counter(), 0
    for k in range(0, len(samples), size):
        learner.train(samples[k:k + size])
        done += len(samples[k:k + size])
    return done / (time.perf_counter() - started)


def throughput(settings: Settings, client: redis.Redis, n: int) -> dict[str, Any]:
    """Trainer from Kafka vs raw train steps vs read + decode only, one run."""
    samples = synthetic_positives(n)
    _produce(settings, samples)
    decode = _consume_only(settings, n)
    tune_gc(settings.learning.gc_young)  # as run_trainer does
    trainer = _trainer_rate(settings, client, n)
    raw = _raw_rate(settings, samples[: min(n, 100_000)])
    return {"samples": n, "batch": settings.learning.batch_size, "trainer": trainer, "raw_train_per_s": raw,
            "decode_only_per_s": decode}


def publish_time(settings: Settings, client: redis.Redis, rows: int, rounds: int = 11) -> dict[str, Any]:
    """One ``publish_delta`` of ``rows`` touched rows — two thirds user rows, one third item rows, plus the
    touched items' vectors — with each row's shard known and the rows grouped by shard, as the trainer
    hands them over (``Learner.row_shard``, filled at admission; ``Learner.touched_rows``), so no id is
    hashed and no row is moved while publishing."""
    from filters.model_store import ModelStore
    from infra.keys import KeyLayout
    from online_learning.versions import ensure_version

    store = ModelStore(client, settings.redis.shards)
    manifest = store.manifest(ensure_version(settings, store))
    dim, shards = settings.learning.dim, settings.redis.shards
    rng = np.random.default_rng(0)

    def family(prefix: str, n: int) -> Family:
        shard = np.array(KeyLayout(shards).shard_list([f"{prefix}{k}" for k in range(n)]), np.int64)
        order = np.argsort(shard, kind="stable")
        return Family([f"{prefix}{k}" for k in order.tolist()], rng.standard_normal((n, dim), np.float32),
                      shard[order], shards)

    users, items = family("u", rows - rows // 3), family("i", rows // 3)
    batch = Rows(users, items, Family(items.ids, rng.standard_normal((len(items.ids), dim), np.float32),
                                      items.shards, shards))
    publisher, took = ModelPublisher(store, settings.learning.keep_versions), []
    rewrites = client.info("persistence").get("aof_rewrites", 0)
    for _ in range(rounds):
        started = time.perf_counter()
        publisher.publish_delta(manifest, batch)
        took.append(time.perf_counter() - started)
    rewrites = client.info("persistence").get("aof_rewrites", 0) - rewrites  # each ~20 MB of AOF: rewrites fork
    return {"rows": rows, "user_rows": len(users.ids), "item_rows": len(items.ids), "fields": len(batch),
            "seconds": sorted(took), "median_s": sorted(took)[rounds // 2], "aof_rewrites": rewrites}


def reads(settings: Settings, n: int = 2000) -> dict[str, Any]:
    """``user_vector`` and ``score`` (100 items) latency through the serving client."""
    from serving.client import FeatureClient

    client = FeatureClient(settings=settings)
    users = [f"u{k}" for k in range(n)]
    items = [f"i{k}" for k in range(100)]
    out: dict[str, Any] = {}
    calls = (("user_vector", lambda u: client.user_vector(u)), ("score_100", lambda u: client.score(u, items)))
    for name, call in calls:
        took = []
        for u in users:
            started = time.perf_counter()
            call(u)
            took.append(time.perf_counter() - started)
        out[name] = percentiles(took)
    client.close()
    return out


def _ms(p: dict[str, float]) -> str:
    return f"{p['p50_us'] / 1000:.2f} / {p['p99_us'] / 1000:.2f} ms"


def _table(res: dict[str, Any]) -> list[list[str]]:
    t, p, r = res["throughput"], res["publish"], res["reads"]
    rows = [["measure", "value"],
            ["trainer from Kafka (decode, dedup, test, train, publish; timed from the first record), "
             f"batch {t['batch']:,}",
             f"{t['trainer']['samples_per_s']:,.0f} samples/s ({t['trainer']['cpu_us_per_sample']:.1f} µs CPU each;"
             f" goal ≥ 100,000: {'met' if t['trainer']['samples_per_s'] >= 100_000 else 'missed'})"],
            ["raw train steps, same batches (no Kafka, no dedup, no evaluation)",
             f"{t['raw_train_per_s']:,.0f} samples/s"],
            ["read + decode the topic only (timed from the first record)", f"{t['decode_only_per_s']:,.0f} samples/s"],
            [f"publish {p['rows']:,} touched rows ({p.get('user_rows', 0):,} user + "
             f"{p.get('item_rows', 0):,} item rows + the items' vectors; median of {len(p['seconds'])})",
             f"{p['median_s'] * 1000:,.0f} ms ({p['seconds'][0] * 1000:,.0f}–{p['seconds'][-1] * 1000:,.0f}; "
             f"{p.get('aof_rewrites', '?')} AOF rewrite(s) meanwhile; goal ≤ 100 ms for 100k rows"
             + (f": {'met' if p['median_s'] <= 0.1 else 'missed'})" if p["rows"] == 100_000 else ")")],
            ["user_vector p50 / p99", _ms(r["user_vector"])],
            ["score 100 items p50 / p99", _ms(r["score_100"])]]
    if "click" in res:
        c = res["click"]
        rows.append([f"click → user_embedding changed, at {c['rate']:,.0f} events/s (n = {c['n']})",
                     f"p50 {c['p50_s']:.2f} s / p99 {c['p99_s']:.2f} s "
                     f"(goal ≤ publish period {c['period_s']:.0f} s + 2 s; {c['missed']} missed)"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="live events/s for the click probe")
    parser.add_argument("--probes", type=int, default=30, help="clicks probed (0 = skip the live probe)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    random.seed(0)
    with private_services() as base:
        settings = with_sections(base, learning={"metrics_port": 0})
        ensure_topics(settings)
        client = redis.Redis.from_url(settings.redis.effective_url)
        res: dict[str, Any] = {"throughput": throughput(settings, client, args.samples),
                               "publish": publish_time(settings, client, args.rows), "reads": reads(settings)}
        if args.probes:
            from bench.learning_probe import click_to_embedding

            res["click"] = click_to_embedding(settings, args.rate, args.probes)
    md = write_results(args.out, "learning", res, _table(res))
    print(md.read_text())


if __name__ == "__main__":
    main()
