"""``AsyncFeatureClient``: the serving reads for asyncio services (redis.asyncio).

It executes the same sans-IO plans as the sync client (:class:`serving.request.FeatureRequest`): only
the pipeline execution differs, every decode and computation is shared. The readers it plans with are
the sync client's pure parts (key layout, script SHA, decoders, the model-version cache); they are
given a sync ``redis.Redis`` object that never connects.

Example::

    features = await AsyncFeatureClient.connect()
    f = await features.request_features("u1", candidates)
    unseen = await features.filter_unseen("u1", candidates)
    await features.close()
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from filters.model_store import unpack_vector
from filters.sequences import decode_member
from infra import metrics
from infra.clock import Clock, now_ms
from infra.errors import ConfigError
from infra.keys import LAYOUT_KEY, MODEL_CURRENT
from infra.redis_client import unreachable, write_packed_async
from infra.settings import Settings, load_settings
from serving.exposure import ExposureReader
from serving.gather import Op
from serving.model import ModelReader, VersionParts
from serving.recommend import Recommendation, Recommender, best_unseen, search_steps
from serving.request import FeatureRequest, Features, FeatureSpec, raw_command, raw_reply
from serving.sequences import CATEGORY_SCAN_LUA, Entry, SequenceReader, entries_of
from serving.stats import EntityId, StatsMatrix, StatsReader

__all__ = ["AsyncFeatureClient"]

_NOTHING = FeatureSpec(unseen=False, last_n={}, user_stats=False, candidate_stats=False, user_vector=False,
                       scores=False)


class AsyncFeatureClient:
    """The async twin of :class:`serving.client.FeatureClient`; build it with :meth:`connect`."""

    def __init__(self, url: str, settings: Settings, clock: Clock, **redis_kwargs: Any) -> None:
        if settings.redis.cluster:
            msg = "AsyncFeatureClient does not support redis.cluster yet: use serving.client.FeatureClient"
            raise ConfigError(msg)
        self.settings, self.url, self._clock = settings, url, clock
        self.redis = aioredis.Redis.from_url(url, **redis_kwargs)
        planning = redis.Redis.from_url(url)  # pure parts only: never used for IO here
        self._exposure = ExposureReader(planning, settings, clock)
        self._sequences = SequenceReader(planning, settings)
        self._stats = StatsReader(planning, settings, clock)
        self._model = ModelReader(planning, settings, self._sequences)
        self._scan = self.redis.register_script(CATEGORY_SCAN_LUA)
        # the index is built from a version's item vectors with the sync reader, in a worker thread
        self._recommender = Recommender(ModelReader(redis.Redis.from_url(url), settings, self._sequences),
                                        self._exposure)

    @classmethod
    async def connect(cls, redis_url: str | None = None, *, settings: Settings | None = None,
                      clock: Clock = now_ms, **redis_kwargs: Any) -> AsyncFeatureClient:
        """Connect and check the data's key layout (one round trip); an unreachable Redis raises one
        :class:`~infra.errors.InfraError` naming the URL."""
        settings = settings or load_settings()
        url = redis_url or settings.redis.effective_url
        client = cls(url, settings, clock, **redis_kwargs)
        try:
            raw = await client.redis.get(LAYOUT_KEY)
        except redis.RedisError as exc:
            await client.close()
            raise unreachable(url, exc) from None
        if raw is not None and int(raw) != settings.redis.shards:
            from infra.redis_client import check_layout  # the sync check words the mismatch

            check_layout(redis.Redis.from_url(url), settings.redis.shards)
        return client

    async def _execute(self, ops: Sequence[Op]) -> list[Any]:
        """One round trip packed in C (:func:`infra.redis_client.write_packed_async`); NOSCRIPT loads the
        exposure script and runs the round again."""
        commands = [raw_command(op) for op in ops]
        try:
            replies = await write_packed_async(self.redis, commands)
        except NoScriptError:
            await self.redis.script_load(self._exposure.script.source)
            replies = await write_packed_async(self.redis, commands)
        return [raw_reply(op, r) for op, r in zip(ops, replies, strict=True)]

    async def request_features(self, user_id: str, candidate_ids: Sequence[str], spec: FeatureSpec | None = None,
                               at: int | None = None) -> Features:
        """As :meth:`serving.client.FeatureClient.request_features`."""
        with metrics.SERVING_SECONDS.labels(method="async_request_features").time():
            s = self.settings
            req = FeatureRequest(self._exposure, self._sequences, self._stats, self._model, s.kafka.partitions,
                                 s.worker.app_id, s.kafka.events_topic, user_id, candidate_ids,
                                 spec or FeatureSpec(), self._clock() if at is None else at)
            req.after_first(await self._execute(req.first()))
            ops = req.second()
            if ops:
                req.after_second(await self._execute(ops))
            return req.result(2 if ops else 1)

    def _only(self, **families: Any) -> FeatureSpec:
        fields = {k: getattr(_NOTHING, k) for k in _NOTHING.__dataclass_fields__}
        return FeatureSpec(**{**fields, **families})

    async def filter_unseen(self, user_id: str, candidate_ids: Sequence[str], at: int | None = None) -> list[str]:
        """The candidates ``user_id`` has surely not been shown, input order kept."""
        ids = list(candidate_ids)
        if not ids:
            return []
        f = await self.request_features(user_id, ids, self._only(unseen=True), at)
        assert f.unseen is not None
        return [c for c, u in zip(ids, f.unseen.tolist(), strict=True) if u]

    async def last_n_multi(self, user_id: str, requests: Mapping[str, int]) -> dict[str, list[Entry]]:
        """Several actions' newest entries in one round trip: ``{action: n}`` -> ``{action: entries}``."""
        return (await self.request_features(user_id, [], self._only(last_n=dict(requests)))).last_n

    async def user_vector(self, user_id: str) -> np.ndarray:
        """The current version's user tower over the fresh embedding and the user's last-N clicks."""
        f = await self.request_features(user_id, [], self._only(user_vector=True))
        if f.user_vector is None:
            ModelReader.require(None)  # no version yet: the same one-line error as the sync client
        assert f.user_vector is not None
        return f.user_vector

    async def score(self, user_id: str, item_ids: Sequence[str]) -> list[float]:
        """cosine / temperature of the user's vector and each item's published vector."""
        f = await self.request_features(user_id, list(item_ids), self._only(scores=True))
        return [] if f.scores is None else [float(x) for x in f.scores]

    async def seen(self, user_id: str, ids: Sequence[str], at: int | None = None) -> list[bool]:
        """Per id: True if probably shown to ``user_id`` within the retention."""
        ids = list(ids)
        if not ids:
            return []
        f = await self.request_features(user_id, ids, self._only(unseen=True), at)
        assert f.unseen is not None
        return [not u for u in f.unseen.tolist()]

    async def last_n(self, user_id: str, action: str, n: int = 50, category: str | None = None,
                     before: int | None = None) -> list[Entry]:
        """The newest ``n`` entries of one action, newest first (``category``: only that category)."""
        call = self._sequences.last_n_call(user_id, action, n, before)
        if call is None:
            return []
        if category is None:
            return entries_of(await self.redis.zrange(*call[0], **call[1]))
        flat = await self._scan(keys=[call[0][0]], args=[n, call[0][1], max(64, 2 * n), category])
        return [decode_member(flat[i], int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]

    async def stats_multi(self, kind: str, ids: Sequence[EntityId], windows: Sequence[str] | None = None,
                          actions: Sequence[str] | None = None, at: int | None = None) -> StatsMatrix:
        """Statistics of many entities of one kind in one ``MGET`` (as the sync client)."""
        keys = self._stats.keys_of(kind, ids)
        blobs: list[Any] = await self.redis.mget(keys) if keys else []
        return self._stats.compute(blobs, ids, windows, actions, at)

    async def stats(self, kind: str, entity_id: EntityId, windows: Sequence[str] | None = None,
                    actions: Sequence[str] | None = None, at: int | None = None) -> dict[str, dict[str, float]]:
        """``{window: {name: value}}`` for one entity."""
        return (await self.stats_multi(kind, [entity_id], windows, actions, at)).row(0)

    async def _parts(self, version: str) -> VersionParts:
        cached = self._model.cached(version)
        if cached is not None:
            return cached
        ops = [Op(m, a) for m, a in self._model.load_ops(version)]
        return self._model.remember(version, *(await self._execute(ops)))

    async def user_embedding(self, user_id: str) -> np.ndarray:
        """The user's fresh ID embedding (the shared row if it has none yet)."""
        rows = await self._embeddings("user", [user_id])
        return np.asarray(rows[0])

    async def item_embeddings(self, item_ids: Sequence[str]) -> np.ndarray:
        """``(len(item_ids), dim)`` item ID embeddings."""
        return await self._embeddings("item", list(item_ids))

    async def _embeddings(self, kind: Literal["user", "item"], ids: list[str]) -> np.ndarray:
        version = ModelReader.require(await self.model_version())
        parts = await self._parts(version)
        store = self._model.store
        raws = await self._execute([Op("hget", (store.embedding_key(kind, i, version), i)) for i in ids])
        default = parts.defaults[kind]
        rows = [unpack_vector(r) if r is not None else default for r in raws]
        out: np.ndarray = np.stack(rows) if rows else np.zeros((0, int(default.shape[0])), np.float32)
        return out

    async def recommend(self, user_id: str, k: int = 100, candidates: Sequence[str] | None = None) -> Recommendation:
        """``k`` items the user has not been shown, best first: the sync client's over-fetching search (the
        index itself is built in a worker thread the first time a version is seen), or over ``candidates``."""
        version = ModelReader.require(await self.model_version())
        if candidates is not None:
            unseen = set(await self.filter_unseen(user_id, candidates))
            best = best_unseen(candidates, await self.score(user_id, candidates), unseen, k)
            return Recommendation(best, version, True, len(candidates))
        vector = await self.user_vector(user_id)
        held = self._recommender.held(version)
        index = held if held is not None else await asyncio.to_thread(self._recommender.refresh_for, version)
        temperature = (await self._parts(version)).weights.temperature
        steps = search_steps(index, vector, k, self._recommender.overfetch, temperature)
        ids = next(steps)
        while True:
            try:
                ids = steps.send(set(await self.filter_unseen(user_id, ids)))
            except StopIteration as done:
                kept, fetched = done.value
                return Recommendation(kept, version, index.exact, fetched)

    async def model_version(self) -> str | None:
        """The model version serving reads."""
        raw = await self.redis.get(MODEL_CURRENT)
        return raw.decode() if isinstance(raw, bytes) else None

    async def close(self) -> None:
        """Release the connection pool."""
        await self.redis.aclose()
