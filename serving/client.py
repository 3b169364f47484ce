"""``FeatureClient``: what retrieval and ranking call to read fresh features from Redis.

One object, one connection pool, read-only (no read ever creates state). Every method is one Redis round
trip, and records its latency in ``recstream_serving_seconds{method=…}``.

Example (needs a Redis with features; see README)::

    features = FeatureClient()                              # URL from settings
    features.filter_unseen("u1", ["i1", "i2", "i3"])        # retrieval: drop what u1 has seen
    features.last_n("u1", "click", n=50, category="food")   # SIM hard search
    features.stats_multi("item", ["i1", "i2"]).row(0)       # ranking: {window: {name: value}}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import redis
from redis.exceptions import NoScriptError

from infra import metrics
from infra.clock import Clock, now_ms
from infra.redis_client import check_layout, connect, unreachable, write_packed
from infra.settings import Settings, load_settings
from serving.exposure import ExposureReader
from serving.gather import Op
from serving.model import ModelReader, UserVector
from serving.recommend import Recommendation, Recommender
from serving.request import FeatureRequest, Features, FeatureSpec, raw_command, raw_reply
from serving.sequences import Entry, SequenceReader
from serving.stats import EntityId, StatsMatrix, StatsReader

T = TypeVar("T")


def _timed(method: str, call: Callable[[], T]) -> T:
    with metrics.SERVING_SECONDS.labels(method=method).time():
        return call()


class FeatureClient:
    """Reads exposure filters, last-N sequences and windowed statistics (sync, thread-safe)."""

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None,
                 clock: Clock = now_ms, **redis_kwargs: Any) -> None:
        """Connect (one round trip: the data's key layout is checked against ``redis.shards``); an
        unreachable Redis raises one :class:`~infra.errors.InfraError` naming the URL. ``clock`` (epoch ms)
        defaults every read's ``at``."""
        self.settings = settings or load_settings()
        url = redis_url or self.settings.redis.effective_url
        self.redis = connect(url, cluster=self.settings.redis.cluster, check=False, **redis_kwargs)
        try:
            check_layout(self.redis, self.settings.redis.shards)
        except redis.RedisError as exc:
            raise unreachable(url, exc) from None
        self._exposure = ExposureReader(self.redis, self.settings, clock)
        self._sequences = SequenceReader(self.redis, self.settings)
        self._stats = StatsReader(self.redis, self.settings, clock)
        self._clock = clock
        self._model = ModelReader(self.redis, self.settings, self._sequences)
        self._recommender = Recommender(self._model, self._exposure)

    # --- exposure filter (retrieval) ---------------------------------------------------------------
    def filter_unseen(self, user_id: str, candidate_ids: Iterable[str], at: int | None = None) -> list[str]:
        """The candidates ``user_id`` has surely not been shown (input order kept); ``at`` = epoch ms."""
        return _timed("filter_unseen", lambda: self._exposure.filter_unseen(user_id, candidate_ids, at))

    def seen(self, user_id: str, ids: Iterable[str], at: int | None = None) -> list[bool]:
        """Per id: True if probably shown to ``user_id`` within the retention (no false negatives)."""
        return _timed("seen", lambda: self._exposure.seen(user_id, ids, at))

    # --- last-N sequences (user towers, DIN, SIM) ---------------------------------------------------
    def last_n(self, user_id: str, action: str, n: int = 50, category: str | None = None,
               before: int | None = None) -> list[Entry]:
        """The newest ``n`` entries of one action, newest first; ``before`` = exclusive ts bound."""
        return _timed("last_n", lambda: self._sequences.last_n(user_id, action, n, category, before))

    def last_n_multi(self, user_id: str, requests: Mapping[str, int],
                     before: int | None = None) -> dict[str, list[Entry]]:
        """Several actions of one user in one round trip: ``{action: n}`` -> ``{action: entries}``."""
        return _timed("last_n_multi", lambda: self._sequences.last_n_multi(user_id, requests, before))

    # --- windowed statistics (ranking) --------------------------------------------------------------
    def stats(self, kind: str, entity_id: EntityId, windows: Sequence[str] | None = None,
              actions: Sequence[str] | None = None, at: int | None = None) -> dict[str, dict[str, float]]:
        """``{window: {name: value}}`` for one entity; names are the action counts (incl. impression),
        ``log1p_<action>`` and the smoothed rates ``ctr``, ``like_rate``, … (docs/statistics.md)."""
        return _timed("stats", lambda: self._stats.stats(kind, entity_id, windows, actions, at))

    def stats_multi(self, kind: str, ids: Sequence[EntityId], windows: Sequence[str] | None = None,
                    actions: Sequence[str] | None = None, at: int | None = None) -> StatsMatrix:
        """The same for many entities of one kind in one round trip (a numpy-backed matrix)."""
        return _timed("stats_multi", lambda: self._stats.stats_multi(kind, ids, windows, actions, at))

    # --- the published two-tower model (retrieval) ---------------------------------------------------
    def model_version(self) -> str | None:
        """The model version serving reads (None before the first publish)."""
        return _timed("model_version", self._model.version)

    def user_embedding(self, user_id: str) -> np.ndarray:
        """The user's fresh ID embedding (the shared default row if it has none yet)."""
        return _timed("user_embedding", lambda: self._model.user_embedding(user_id))

    def item_embeddings(self, item_ids: Sequence[str]) -> np.ndarray:
        """``(len(item_ids), dim)`` item ID embeddings (the shared row where an item has none)."""
        return _timed("item_embeddings", lambda: self._model.item_embeddings(item_ids))

    def user_vector(self, user_id: str) -> UserVector:
        """The user tower (numpy) over the fresh user embedding and the user's current last-N clicks."""
        return _timed("user_vector", lambda: self._model.user_vector(user_id))

    def score(self, user_id: str, item_ids: Sequence[str]) -> list[float]:
        """cosine / temperature of the user's vector and each item's published vector."""
        return _timed("score", lambda: self._model.score(user_id, item_ids))

    # --- everything for one ranking request -----------------------------------------------------------
    def request_features(self, user_id: str, candidate_ids: Sequence[str], spec: FeatureSpec | None = None,
                         at: int | None = None) -> Features:
        """Unseen mask, last-N, user and candidate statistics, user vector, candidate scores (and item
        metadata) for one user and its candidates, in two pipelined round trips (serving/request.py)."""
        return _timed("request_features", lambda: self._request(user_id, candidate_ids, spec, at))

    def plan(self, user_id: str, candidate_ids: Sequence[str], spec: FeatureSpec | None = None,
             at: int | None = None) -> FeatureRequest:
        """The sans-IO plan of one :meth:`request_features` (the async client executes the same)."""
        s = self.settings
        return FeatureRequest(self._exposure, self._sequences, self._stats, self._model, s.kafka.partitions,
                              s.worker.app_id, s.kafka.events_topic, user_id, candidate_ids,
                              spec or FeatureSpec(), self._clock() if at is None else at)

    def _request(self, user_id: str, candidate_ids: Sequence[str], spec: FeatureSpec | None,
                 at: int | None) -> Features:
        req = self.plan(user_id, candidate_ids, spec, at)
        req.after_first(self._execute(req.first()))
        ops = req.second()
        if ops:
            req.after_second(self._execute(ops))
        return req.result(2 if ops else 1)

    def _execute(self, ops: Sequence[Op]) -> list[Any]:
        """One round trip, packed in C (:func:`infra.redis_client.write_packed`); NOSCRIPT loads the
        exposure script and runs the round again."""
        try:
            replies = write_packed(self.redis, [raw_command(op) for op in ops])
        except NoScriptError:
            self._exposure.script.load(self.redis)
            replies = write_packed(self.redis, [raw_command(op) for op in ops])
        return [raw_reply(op, r) for op, r in zip(ops, replies, strict=True)]

    def recommend(self, user_id: str, k: int = 100, candidates: Sequence[str] | None = None) -> Recommendation:
        """``k`` items ``user_id`` has not been shown, best first by the current model's score: top-k over
        every published item vector (an HNSW index above ``serving.ann.EXACT_BELOW`` items), or over
        ``candidates``. Call :meth:`start_index_refresh` in a long-running server."""
        return _timed("recommend", lambda: self._recommender.recommend(user_id, k, candidates))

    def start_index_refresh(self) -> None:
        """Rebuild the recommendation index in a background thread when the model version changes."""
        self._recommender.start()

    def close(self) -> None:
        """Stop the index refresh thread and release the connection pool."""
        self._recommender.stop()
        self.redis.close()
