"""Serving, measured: ``request_features`` for 1,000 candidates (sync and async), and ``recommend`` top-100
over 100k and 1M item vectors (HNSW vs exact: latency, recall, build time).

``python -m bench.serving_bench [--requests 500] [--items 100000,1000000]`` (``recstream bench serving``)
starts a private Redis, writes features for 2,000 users × 20,000 items through the real ingest stage
(~200k events over the last 3 days) and a published model version, then measures in one run:

- ``request_features``, 1,000 candidates × (unseen mask + 4 windows of item and user stats + last-N 50 ×
  3 actions + user vector + scores), sync client p50 / p99 (goal p99 ≤ 8 ms on loopback), and the async
  client with 8 requests in flight (requests/s), and ``POST /v1/features`` against ``recstream serve`` with
  8 concurrent HTTP clients (p50 / p99, requests/s; goal p99 ≤ 20 ms);
- ``recommend`` k = 100 through the index: exact numpy vs faiss HNSW over ``--items`` random unit
  vectors (d = 32), p50 / p99 latency and recall@100 of HNSW against exact, and the build time.
Writes ``serving.json`` / ``serving.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import percentiles, private_redis, write_results
from filters.events import Event, encode_batch
from infra.settings import Settings
from serving.ann import ItemIndex
from serving.async_client import AsyncFeatureClient
from serving.client import FeatureClient
from stream.batching import KeyPartitioner
from stream.ingest import IngestStage, Record

USERS, ITEMS, EVENTS = 2000, 20_000, 200_000


def _fill(settings: Settings, client: Any) -> None:
    """Features through the ingest stage, then a full model version trained on synthetic positives."""
    rng, now = random.Random(1), int(time.time() * 1000)
    kinds: list[Any] = ["impression"] * 6 + ["click", "like", "collect"]
    events = sorted((Event(event_id=f"e{k}", type=rng.choice(kinds),
                           user_id=f"u{rng.randrange(USERS)}", item_id=f"i{rng.randrange(ITEMS)}",
                           ts=now - rng.randrange(3 * 86_400_000)) for k in range(EVENTS)), key=lambda e: e.ts)
    place, parts = KeyPartitioner(settings.kafka.partitions), dict[int, list[Event]]()
    for e in events:
        parts.setdefault(place(e.user_id), []).append(e)
    stage = IngestStage(client, settings)
    for p, evs in parts.items():
        for n, k in enumerate(range(0, len(evs), 5000)):  # offsets in order, no gaps (the worker's gap check)
            stage.process([Record(settings.kafka.events_topic, p, n, None, encode_batch(evs[k:k + 5000]))]).commit()
    from bench.learning_bench import synthetic_positives
    from filters.model_store import ModelStore
    from online_learning.learner import Learner
    from online_learning.versions import publish_full

    learner = Learner.fresh(settings.learning)
    samples = synthetic_positives(60_000, users=USERS, items=ITEMS)
    for k in range(0, len(samples), 1024):
        learner.train(samples[k:k + 1024])
    publish_full(settings, ModelStore(client, settings.redis.shards), learner, "bench", None)


def _sync(settings: Settings, requests: int) -> dict[str, Any]:
    client = FeatureClient(settings=settings)
    rng = random.Random(2)
    took = []
    for _ in range(requests):
        cands = [f"i{rng.randrange(ITEMS)}" for _ in range(1000)]
        started = time.perf_counter()
        client.request_features(f"u{rng.randrange(USERS)}", cands)
        took.append(time.perf_counter() - started)
    client.close()
    return percentiles(took[10:])


async def _async(settings: Settings, requests: int, concurrency: int = 8) -> dict[str, Any]:
    client = await AsyncFeatureClient.connect(settings=settings)
    rng = random.Random(3)
    jobs = [(f"u{rng.randrange(USERS)}", [f"i{rng.randrange(ITEMS)}" for _ in range(1000)]) for _ in range(requests)]
    queue: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker() -> None:
        while not queue.empty():
            user, cands = queue.get_nowait()
            await client.request_features(user, cands)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    await client.close()
    return {"requests_per_s": requests / wall, "concurrency": concurrency}


def _http(settings: Settings, requests: int, concurrency: int = 8) -> dict[str, Any]:
    """``POST /v1/features`` (1,000 candidates) against ``recstream serve``, ``concurrency`` clients."""
    import threading

    import httpx

    from bench.common import free_port
    from stream.worker_process import WorkerProcess

    port = free_port()
    took: list[float] = []
    rng = random.Random(4)
    bodies = [{"user_id": f"u{rng.randrange(USERS)}",
               "candidate_ids": [f"i{rng.randrange(ITEMS)}" for _ in range(1000)]} for _ in range(requests)]

    def client(part: list[dict[str, Any]]) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for body in part:
                started = time.perf_counter()
                http.post("/v1/features", json=body).raise_for_status()
                took.append(time.perf_counter() - started)

    with WorkerProcess(settings, settings.home / "serve.log", args=("serve", "--port", str(port))):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        client(bodies[:20])  # warm-up
        took.clear()
        threads = [threading.Thread(target=client, args=(bodies[k::concurrency],)) for k in range(concurrency)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
    return percentiles(took) | {"requests_per_s": requests / wall, "concurrency": concurrency}


def _usearch(vecs: np.ndarray, qs: np.ndarray, k: int, want: list[set[int]]) -> dict[str, Any]:
    """The same catalogue and queries through usearch's HNSW (inner product), for the pick."""
    from usearch.index import Index

    started = time.perf_counter()
    index = Index(ndim=vecs.shape[1], metric="ip", connectivity=16, expansion_add=128, expansion_search=2 * k)
    index.add(np.arange(len(vecs)), vecs, threads=2)
    built = time.perf_counter() - started
    took, recall = [], []
    for q, truth in zip(qs, want, strict=True):
        t0 = time.perf_counter()
        got = index.search(q, k).keys
        took.append(time.perf_counter() - t0)
        recall.append(len(set(got.tolist()) & truth) / k)
    return {"build_s": built, "search": percentiles(took), "recall_at_100": float(np.mean(recall))}


def _ann(n: int, queries: int = 200, k: int = 100) -> dict[str, Any]:
    rng = np.random.default_rng(n)
    vecs = rng.standard_normal((n, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"i{j}" for j in range(n)]
    index = ItemIndex(ids, vecs, "bench", exact_below=0, threads=2)
    qs = rng.standard_normal((queries, 32)).astype(np.float32)
    exact_t, ann_t, recall, truths = [], [], [], []
    for q in qs:
        t0 = time.perf_counter()
        want = index.exact_search(q, k)
        t1 = time.perf_counter()
        got = index.search(q, k)
        t2 = time.perf_counter()
        exact_t.append(t1 - t0)
        ann_t.append(t2 - t1)
        recall.append(len({i for i, _ in got} & {i for i, _ in want}) / k)
        truths.append({int(i[1:]) for i, _ in want})
    return {"items": n, "build_s": index.built_s, "exact": percentiles(exact_t), "hnsw": percentiles(ann_t),
            "recall_at_100": float(np.mean(recall)), "usearch": _usearch(vecs, qs, k, truths)}


def _request_rows(res: dict[str, Any]) -> list[list[str]]:
    if "sync" not in res:  # not run, and not in the previous results
        return []
    s, a, h = res["sync"], res["async"], res["http"]
    return [["request_features, 1,000 candidates, sync p50 / p99",
             f"{s['p50_us'] / 1000:.2f} / {s['p99_us'] / 1000:.2f} ms (goal p99 ≤ 8 ms: "
             f"{'met' if s['p99_us'] <= 8000 else 'missed'})"],
            [f"request_features, async, {a['concurrency']} in flight", f"{a['requests_per_s']:,.0f} requests/s"],
            [f"POST /v1/features, 1,000 candidates, {h['concurrency']} concurrent HTTP clients: p50 / p99, rate",
             f"{h['p50_us'] / 1000:.2f} / {h['p99_us'] / 1000:.2f} ms, {h['requests_per_s']:,.0f} requests/s "
             f"(goal p99 ≤ 20 ms: {'met' if h['p99_us'] <= 20_000 else 'missed'})"]]


def _table(res: dict[str, Any]) -> list[list[str]]:
    rows = [["measure", "value"], *_request_rows(res)]
    for r in res.get("ann", []):
        rows.append([f"recommend top-100 over {r['items']:,} vectors: exact p50 / p99",
                     f"{r['exact']['p50_us'] / 1000:.2f} / {r['exact']['p99_us'] / 1000:.2f} ms"])
        rows.append([f"recommend top-100 over {r['items']:,} vectors: faiss HNSW p50 / p99, recall@100, build",
                     f"{r['hnsw']['p50_us'] / 1000:.2f} / {r['hnsw']['p99_us'] / 1000:.2f} ms, "
                     f"{r['recall_at_100']:.3f}, {r['build_s']:.1f} s"])
        u = r.get("usearch")
        if u is None:
            continue
        rows.append([f"top-100 over {r['items']:,} vectors: usearch HNSW p50 / p99, recall@100, build",
                     f"{u['search']['p50_us'] / 1000:.2f} / {u['search']['p99_us'] / 1000:.2f} ms, "
                     f"{u['recall_at_100']:.3f}, {u['build_s']:.1f} s"])
    when = res.get("part_when", {})
    kept = [f"{part}: {w}" for part, w in sorted(when.items()) if w != max(when.values())]
    if kept:
        rows.append(["parts kept from an earlier run (its date)", "; ".join(kept)])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--items", default="100000,1000000", help="catalogue sizes for the ANN comparison")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--parts", default="requests,ann",
                        help="requests (sync, async, HTTP) and/or ann; a part not run keeps its previous results")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    parts = set(args.parts.split(","))
    previous = args.out / "serving.json"
    res: dict[str, Any] = {}
    if parts != {"requests", "ann"} and previous.exists():
        import json

        old = json.loads(previous.read_text())
        res = {k: v for k, v in old.items() if k in ("sync", "async", "http", "ann")}
        # a kept part keeps the date of the run that measured it
        res["part_when"] = {p: old.get("part_when", {}).get(p, old["when"]) for p in ("requests", "ann")}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res["part_when"] = res.get("part_when", {}) | {p: now for p in parts}
    if "requests" in parts:
        with private_redis(join={"enabled": False}) as (client, settings):
            _fill(settings, client)
            res |= {"sync": _sync(settings, args.requests), "async": asyncio.run(_async(settings, args.requests)),
                    "http": _http(settings, args.requests)}
    if "ann" in parts:
        res["ann"] = [_ann(int(n)) for n in args.items.split(",") if n]
    md = write_results(args.out, "serving", res, _table(res))
    print(md.read_text())


if __name__ == "__main__":
    main()
