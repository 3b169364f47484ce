"""Peer 3 of :mod:`bench.peers_bench`: a Feast-style Redis layout read per entity per view, against
:meth:`serving.client.FeatureClient.request_features`, for one ranking request (1 user + C candidates).

The Feast-style store (:data:`FEAST_DB`) holds one hash per entity per feature view — ``user_stats``,
``item_stats`` (every window × every statistics feature as a field, float64) and ``user_last_n`` (one
field per action, the entries msgpack-encoded) — materialized from the features recstream's writers
produced for the same events, read at the same time :data:`~bench.peers_writes.AT`. A request is one
pipeline of ``HMGET`` per entity per view (what Feast's Redis online store sends), decoded to the same
arrays; :func:`feast_matches` checks that both answers are equal.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import redis
from tqdm import tqdm

from bench.common import BAR, percentiles
from bench.peers_writes import AT, db_client, server_counters
from infra.redis_client import write_packed
from infra.settings import Settings
from serving.client import FeatureClient
from serving.request import Features, FeatureSpec
from serving.sequences import Entry, SequenceReader
from serving.stats import StatsMatrix, StatsReader

FEAST_DB = 2
SPEC = FeatureSpec(unseen=False, user_vector=False, scores=False)
"""What both sides answer: last-N of click / like / collect (50 each), user and candidate statistics."""
WITH_UNSEEN = FeatureSpec(user_vector=False, scores=False)
"""The same plus the exposure mask (no Feast-style equivalent: measured for recstream alone)."""
BLOCK = 25  # requests per path before switching to the next one (Redis counters are read per block)
_entries = msgspec.msgpack.Encoder()
_decode_entries = msgspec.msgpack.Decoder(list[Entry]).decode


def feast_key(view: str, entity: str) -> str:
    """The hash of one entity in one feature view."""
    return f"feast:{view}:{entity}"


@dataclass(frozen=True)
class FeastAnswer:
    """One Feast-style request's features, shaped as :class:`~serving.request.Features`' arrays."""

    user_stats: np.ndarray  # (windows, names)
    candidate_stats: np.ndarray  # (candidates, windows, names)
    last_n: dict[str, list[Entry]]


class FeastStyle:
    """Materialize into, and read from, the Feast-style layout of :data:`FEAST_DB`."""

    def __init__(self, client: redis.Redis, settings: Settings, packed: bool = False) -> None:
        self.client, self.settings, self.packed = db_client(client, FEAST_DB), settings, packed
        stats = StatsReader(client, settings)
        self.windows = tuple(w.name for w in stats.layout.windows)
        self.names = stats.compute([None], ["x"], at=AT).names
        self.fields = [f"{w}:{n}" for w in self.windows for n in self.names]
        self.actions = list(SPEC.last_n)

    def _stats_rows(self, view: str, matrix: StatsMatrix) -> list[tuple[Any, ...]]:
        out = []
        for i, entity in enumerate(matrix.ids):
            values = matrix.values[i].reshape(-1).tolist()
            pairs = [x for f, v in zip(self.fields, values, strict=True) for x in (f, struct.pack("<d", v))]
            out.append(("HSET", feast_key(view, str(entity)), "_ts", AT, *pairs))
        return out

    def materialize(self, source: redis.Redis, users: Sequence[str], items: Sequence[str]) -> None:
        """Copy recstream's features at :data:`AT` (database 0 of ``source``) into the Feast-style hashes."""
        self.client.flushdb()
        stats, seqs = StatsReader(source, self.settings), SequenceReader(source, self.settings)
        for view, kind, ids in (("user_stats", "user", users), ("item_stats", "item", items)):
            for k in range(0, len(ids), 1000):
                write_packed(self.client, self._stats_rows(view, stats.stats_multi(kind, ids[k:k + 1000], at=AT)))
        rows = []
        for u in users:
            last = seqs.last_n_multi(u, SPEC.last_n)
            pairs = [x for a in self.actions for x in (a, _entries.encode(last[a]))]
            rows.append(("HSET", feast_key("user_last_n", u), "_ts", AT, *pairs))
        write_packed(self.client, rows)

    def commands(self, user: str, candidates: Sequence[str]) -> list[tuple[Any, ...]]:
        """The request's commands: HMGET user_stats, HMGET user_last_n, HMGET item_stats per candidate."""
        return [("HMGET", feast_key("user_stats", user), *self.fields),
                ("HMGET", feast_key("user_last_n", user), *self.actions),
                *(("HMGET", feast_key("item_stats", c), *self.fields) for c in candidates)]

    def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        if self.packed:
            return write_packed(self.client, commands)
        pipe = self.client.pipeline(transaction=False)
        for cmd in commands:
            pipe.execute_command(*cmd)  # type: ignore[no-untyped-call]
        return list(pipe.execute())

    def _matrix(self, replies: Sequence[list[bytes | None]]) -> np.ndarray:
        shape = (len(replies), len(self.windows), len(self.names))
        if any(v is None for r in replies for v in r):  # an entity not materialized: NaN, the ranker's default
            return np.array([[np.nan if v is None else struct.unpack("<d", v)[0] for v in r] for r in replies],
                            dtype=np.float64).reshape(shape)
        return np.frombuffer(b"".join(v for r in replies for v in r), "<f8").reshape(shape)  # type: ignore[misc]

    def request(self, user: str, candidates: Sequence[str]) -> FeastAnswer:
        """One ranking request, one pipelined round trip."""
        user_stats, last_n, *cands = self._send(self.commands(user, candidates))
        lists = {a: _decode_entries(v) if v is not None else [] for a, v in zip(self.actions, last_n, strict=True)}
        return FeastAnswer(self._matrix([user_stats])[0], self._matrix(cands), lists)


def feast_matches(ours: Features, theirs: FeastAnswer) -> bool:
    """Both answers hold the same statistics (to the float) and the same last-N entries."""
    assert ours.user_stats is not None and ours.candidate_stats is not None
    return bool(np.array_equal(ours.user_stats.values[0], theirs.user_stats)
                and np.array_equal(ours.candidate_stats.values, theirs.candidate_stats)
                and ours.last_n == theirs.last_n)


def _paths(features: FeatureClient, feast: FeastStyle, packed: FeastStyle) -> dict[str, Callable[..., Any]]:
    return {"recstream": lambda u, c: features.request_features(u, c, SPEC, at=AT),
            "feast-style (redis-py pipeline)": feast.request,
            "feast-style (packed pipeline)": packed.request,
            "recstream + unseen mask": lambda u, c: features.request_features(u, c, WITH_UNSEEN, at=AT)}


def run_reads(client: redis.Redis, settings: Settings, users: Sequence[str], items: Sequence[str],
              sizes: Sequence[int], requests: int, seed: int = 5) -> dict[str, Any]:
    """Materialize, then ``requests`` requests per candidate count in ``sizes``, every path in blocks of
    :data:`BLOCK` requests, interleaved: latency percentiles, round trips, Redis commands and CPU per request,
    and how many of the compared answers were equal."""
    feast, packed = FeastStyle(client, settings), FeastStyle(client, settings, packed=True)
    feast.materialize(client, users, items)
    features = FeatureClient(settings=settings, clock=lambda: AT)
    paths, rng, out = _paths(features, feast, packed), random.Random(seed), {}
    bar = tqdm(total=len(sizes) * requests * len(paths), desc="reads", **BAR)
    for size in sizes:
        asks = [(users[k % len(users)], rng.sample(list(items), size)) for k in range(requests)]
        took: dict[str, list[float]] = {p: [] for p in paths}
        counters: dict[str, dict[str, float]] = {p: dict.fromkeys(("commands", "cpu_s"), 0.0) for p in paths}
        for b, start in enumerate(range(0, requests, BLOCK)):
            names = list(paths)[b % len(paths):] + list(paths)[:b % len(paths)]
            for name in names:
                before = server_counters(client)
                for user, cands in asks[start:start + BLOCK]:
                    t0 = time.perf_counter()
                    paths[name](user, cands)
                    took[name].append(time.perf_counter() - t0)
                after = server_counters(client)
                for key in counters[name]:
                    counters[name][key] += after[key] - before[key]
                bar.update(len(asks[start:start + BLOCK]))
        equal = sum(feast_matches(features.request_features(u, c, SPEC, at=AT), feast.request(u, c))
                    for u, c in asks[:50])
        trips = features.request_features(*asks[0], SPEC, at=AT).round_trips
        out[str(size)] = {"paths": {p: {**percentiles(took[p]), "round_trips": 1 if p.startswith("feast") else trips,
                                        "commands": counters[p]["commands"] / requests,
                                        "redis_cpu_us": counters[p]["cpu_s"] / requests * 1e6} for p in paths},
                          "equal_answers": [equal, min(50, requests)]}
    bar.close()
    features.close()
    encoding = feast.client.object("encoding", feast_key("item_stats", items[0]))
    return {"requests": requests, "block": BLOCK, "fields_per_stats_hash": len(feast.fields),
            "stats_hash_encoding": encoding.decode() if isinstance(encoding, bytes) else encoding, "sizes": out}
