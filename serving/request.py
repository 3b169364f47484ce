"""``request_features``: everything a ranker needs for one user and its candidates, in two round trips.

Sans-IO: :class:`FeatureRequest` lists the Redis commands of each round (:class:`Op`) and decodes their
replies; the sync and the async client only execute the ops (a redis-py pipeline, sync or asyncio), so
both share every line of decoding and computing.

- **Round 1** (everything independent): the model pointer, the user's embedding row under the version
  cached last, the exposure read script, the last-N sequences (the click one also feeds the user
  vector's history), the user's and the candidates' statistics (``MGET``), the candidates' item vectors,
  the candidates' metadata (if asked), and the features' watermarks (freshness).
- **Round 2** (depends on round 1): the history items' embeddings, for the user vector. If the pointer
  moved since the version guessed in round 1, round 2 also re-reads the user's row and the candidates'
  vectors under the new version, so no answer mixes versions.

Freshness: ``features_ms`` is the oldest partition watermark's newest event ts (every feature family
is at least this fresh), ``embeddings_ms`` the model manifest's last publish.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from filters.bloom import item_hashes
from filters.events import check_user
from filters.manifest import decode_manifest
from filters.model_store import unpack_vector
from filters.towers import history_mean, user_vectors
from infra.errors import ModelError
from infra.keys import MODEL_CURRENT, model_key, watermark
from infra.redis_client import is_cluster
from serving.exposure import ExposureReader, seen_in_hashes
from serving.gather import Gather, KeyGather, Op
from serving.model import ModelReader
from serving.sequences import Entry, SequenceReader, entries_of
from serving.stats import StatsMatrix, StatsReader

__all__ = ["FeatureRequest", "FeatureSpec", "Features", "Op", "raw_command", "raw_reply"]


@dataclass(frozen=True)
class FeatureSpec:
    """Which families to read: last-N per action (``{action: n}``), statistics windows (None = all)."""

    unseen: bool = True
    last_n: Mapping[str, int] = field(default_factory=lambda: {"click": 50, "like": 50, "collect": 50})
    windows: tuple[str, ...] | None = None
    user_stats: bool = True
    candidate_stats: bool = True
    user_vector: bool = True
    scores: bool = True
    metadata: bool = False


@dataclass(frozen=True)
class Features:
    """The answer of one ``request_features``; families not asked for are None (or empty)."""

    user_id: str
    candidate_ids: list[str]
    unseen: np.ndarray | None  # bool per candidate: True = surely not shown yet
    last_n: dict[str, list[Entry]]
    user_stats: StatsMatrix | None  # one row
    candidate_stats: StatsMatrix | None  # one row per candidate
    user_vector: np.ndarray | None
    scores: np.ndarray | None  # cosine / temperature per candidate (0.0 for an item without a vector)
    metadata: list[dict[str, str]] | None
    model_version: str | None
    freshness: dict[str, int]  # "features_ms", "embeddings_ms"
    round_trips: int


class FeatureRequest:
    """One request's plan: :meth:`first` ops → :meth:`after_first` → :meth:`second` ops → :meth:`result`."""

    def __init__(self, exposure: ExposureReader, sequences: SequenceReader, stats: StatsReader,
                 model: ModelReader, partitions: int, group: str, topic: str, user_id: str,
                 candidate_ids: Sequence[str], spec: FeatureSpec, at: int) -> None:
        check_user(user_id)
        self.exposure, self.sequences, self.stats, self.model = exposure, sequences, stats, model
        self.user_id, self.candidates, self.spec, self.at = user_id, list(candidate_ids), spec, at
        self._hashes = item_hashes(self.candidates, exposure.bloom.hash_version, "candidate ids") \
            if spec.unseen and self.candidates else None
        self._wm = [watermark(group, topic, p) for p in range(partitions)]
        self._slots: dict[str, slice] = {}
        self._ops: list[Op] = []
        self._replies: dict[str, list[Any]] = {}
        self._need_model = spec.user_vector or spec.scores  # scores need the user vector too
        self.version: str | None = model.last_version() if self._need_model else None

    def _add(self, name: str, ops: list[Op]) -> None:
        self._slots[name] = slice(len(self._ops), len(self._ops) + len(ops))
        self._ops += ops

    def first(self) -> list[Op]:
        """Round 1's ops."""
        self._ops, self._slots = [], {}
        s, u = self.spec, self.user_id
        self._add("pointer", [Op("get", (MODEL_CURRENT,))])
        self._add("watermarks", [Op("hget", (k, "max_ts")) for k in self._wm])
        if self._hashes is not None:
            self._add("exposure", [Op("evalsha", self.exposure.read_call(u, self.at))])
        actions = dict(s.last_n)
        if self._need_model:
            actions["click"] = max(actions.get("click", 0), self.model.history)
        calls = {a: self.sequences.last_n_call(u, a, n) for a, n in actions.items()}
        self._last_n_actions = [a for a, c in calls.items() if c is not None]
        self._all_actions = list(actions)
        self._add("last_n", [Op("zrange", *c) for c in calls.values() if c is not None])
        if s.user_stats:
            self._add("user_stats", [Op("mget", ([self.stats.keys.stats("user", u)],))])
        # each candidate's shard, hashed once for its stats key and its vector's hash
        self._shards = self.stats.keys.shard_list(self.candidates) if s.candidate_stats or s.scores else []
        if s.candidate_stats and self.candidates:
            self._candidate_stats = KeyGather(self.stats.keys.stats_keys("item", self.candidates, self._shards),
                                              per_slot=is_cluster(self.stats.client))
            self._add("candidate_stats", self._candidate_stats.ops)
        if s.metadata:
            self._add("metadata", [Op("hgetall", (self.stats.keys.item_meta(c),)) for c in self.candidates])
        self._add_model_reads("model1")
        return self._ops

    def _add_model_reads(self, name: str) -> None:
        if self.version is None:
            return
        store, v, user = self.model.store, self.version, self.user_id
        ops = [Op("get", (model_key(v, "manifest"),)), Op("hget", (store.embedding_key("user", user, v), user))]
        cands, shards = (self.candidates, self._shards) if self.spec.scores else ([], [])
        self._vectors = Gather(cands, store.keys.item_vector_keys(cands, v, shards))
        self._add(name, ops + self._vectors.ops)

    def after_first(self, replies: Sequence[Any]) -> None:
        """Keep round 1's replies."""
        self._replies.update({name: list(replies[sl]) for name, sl in self._slots.items()})

    def second(self) -> list[Op]:
        """Round 2's ops (empty when nothing depends on round 1)."""
        self._ops, self._slots = [], {}
        raw = self._replies["pointer"][0]
        current = raw.decode() if isinstance(raw, bytes) else None
        if self._need_model and current != self.version:
            self.version = current  # the pointer moved (or nothing was cached): read the model part again
            self._add_model_reads("model2")
        if current is not None and self.model.cached(current) is None and self._need_model:
            self._add("load", [Op(m, a) for m, a in self.model.load_ops(current)])
        if self._need_model and current is not None:
            history = [e.item_id for e in self._last_n()["click"][: self.model.history]]
            store = self.model.store
            self._history = Gather(history, lambda i: store.embedding_key("item", i, current))
            self._add("history", self._history.ops)
        return self._ops

    def after_second(self, replies: Sequence[Any]) -> None:
        """Keep round 2's replies (and cache a version loaded by them)."""
        self.after_first(replies)
        if "load" in self._replies and self.version is not None:
            self.model.remember(self.version, *self._replies.pop("load"))

    def _last_n(self) -> dict[str, list[Entry]]:
        rows = self._replies.get("last_n", [])
        out: dict[str, list[Entry]] = {a: [] for a in self._all_actions}
        out.update({a: entries_of(r) for a, r in zip(self._last_n_actions, rows, strict=True)})
        return out

    def result(self, round_trips: int) -> Features:
        """Decode everything into one :class:`Features`."""
        s, r = self.spec, self._replies
        last_n = self._last_n()
        asked = {a: last_n[a][:n] for a, n in s.last_n.items()}
        unseen = ~seen_in_hashes(r["exposure"][0], self._hashes) if self._hashes is not None else None
        user_stats = self.stats.compute(r["user_stats"][0], [self.user_id], s.windows, None, self.at) \
            if s.user_stats else None
        cand = self.stats.compute(self._candidate_stats.values(r["candidate_stats"]), self.candidates, s.windows,
                                  None, self.at) if "candidate_stats" in r else None
        meta = [{k.decode(): v.decode() for k, v in h.items()} for h in r["metadata"]] if s.metadata else None
        vec, scores, published = self._model_part(last_n)
        marks = [int(x) for x in r["watermarks"] if x is not None]
        return Features(self.user_id, self.candidates, unseen, asked, user_stats, cand, vec, scores, meta,
                        self.version, {"features_ms": min(marks) if marks else -1, "embeddings_ms": published},
                        round_trips)

    def _model_part(self, last_n: Mapping[str, list[Entry]]) -> tuple[np.ndarray | None, np.ndarray | None, int]:
        if self.version is None or not self._need_model:
            return None, None, -1
        v = self.model.cached(self.version)
        if v is None:
            msg = f"model version {self.version} was not loaded"
            raise ModelError(msg)
        manifest_raw, *model = self._replies.get("model2", self._replies.get("model1", []))
        user_raw, item_raws = model[0], self._vectors.values(model[1:])
        published = decode_manifest(manifest_raw).last_publish_ms if isinstance(manifest_raw, bytes) else -1
        user = unpack_vector(user_raw) if user_raw is not None else v.defaults["user"]
        history = self._history.values(self._replies["history"]) if "history" in self._replies else []
        rows = [unpack_vector(x) if x is not None else v.defaults["item"] for x in history]
        mean = history_mean(np.stack(rows) if rows else np.zeros((0, v.manifest.dim), np.float32), v.manifest.dim)
        vec = user_vectors(v.weights, user[None, :], mean)[0]
        scores = None
        if self.spec.scores:
            scores = np.zeros(len(item_raws), np.float32)  # an item without a vector scores 0.0
            known = [k for k, x in enumerate(item_raws) if x is not None]
            if known:
                items = np.frombuffer(b"".join(item_raws[k] for k in known), "<f4").reshape(len(known), -1)
                scores[known] = (items @ vec) / np.float32(v.weights.temperature)
        return (vec if self.spec.user_vector else None), scores, published


def raw_command(op: Op) -> tuple[Any, ...]:
    """The Redis command of ``op`` as it goes on the wire, for the ops a plan uses (so the sync client can
    pack a whole round in C instead of through redis-py's per-command Python).

    >>> raw_command(Op("zrange", ("k", "+inf", "-inf"), {"desc": True, "byscore": True, "offset": 0, "num": 5,
    ...                                                   "withscores": True}))
    ('ZRANGE', 'k', '+inf', '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, 5, 'WITHSCORES')
    >>> raw_command(Op("hmget", ("h", ["a", "b"])))
    ('HMGET', 'h', 'a', 'b')
    """
    if op.method == "zrange":
        kw = op.kwargs
        extra = ["BYSCORE"] if kw.get("byscore") else []
        extra += ["REV"] if kw.get("desc") else []
        extra += ["LIMIT", kw["offset"], kw["num"]] if kw.get("num") is not None else []
        extra += ["WITHSCORES"] if kw.get("withscores") else []
        return ("ZRANGE", *op.args, *extra)
    if op.method == "hmget":
        key, fields = op.args
        return ("HMGET", key, *fields)
    if op.method == "mget":
        (keys,) = op.args
        return ("MGET", *keys)
    return (op.method.upper(), *op.args)


def raw_reply(op: Op, reply: Any) -> Any:
    """``reply`` to ``raw_command(op)`` in the shape redis-py's method would have returned."""
    if op.method == "zrange" and op.kwargs.get("withscores"):
        if reply and isinstance(reply[0], list | tuple):  # RESP3: [member, score] pairs already
            return [(m, float(score)) for m, score in reply]
        return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]
    if op.method == "hgetall" and not isinstance(reply, dict):  # RESP2: a flat list
        return dict(zip(reply[::2], reply[1::2], strict=True))
    return reply
