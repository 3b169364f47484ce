"""Serving reads of the published two-tower model (mounted on ``FeatureClient``; docs/learning.md).

Everything runs in numpy (:mod:`filters.towers`): serving never imports torch. A version's manifest,
tower weights and default rows are immutable once it is published, so they are cached per version;
the pointer ``rs2:model:current`` is read with every request, in the same pipeline as the request's
first reads, which are made under the version cached last — if the pointer moved, they are repeated
under the new one. Each answer therefore comes from one version only, even while a full update or a
rollback switches it (kept versions are deleted only after ``learning.keep_versions`` newer ones).

Round trips: ``user_embedding`` 1; ``user_vector`` and ``score`` 2 (the user's row and last-N clicks,
then the clicked items' rows — the second depends on the first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import redis

from filters.manifest import Manifest, decode_manifest
from filters.model_store import ModelStore, unpack_vector
from filters.towers import TowerWeights, decode_weights, history_mean, scores, user_vectors
from infra.errors import ModelError
from infra.keys import MODEL_CURRENT, model_key
from infra.settings import Settings
from serving.gather import Gather
from serving.sequences import SequenceReader, entries_of

__all__ = ["ModelReader", "UserVector", "VersionParts"]


@dataclass(frozen=True)
class VersionParts:
    manifest: Manifest
    weights: TowerWeights
    defaults: dict[str, np.ndarray]


@dataclass(frozen=True)
class UserVector:
    """A user's tower output and what it was computed from."""

    vector: np.ndarray
    version: str
    own_row: bool  # False: the user has no own embedding row yet (the shared default row was used)
    history: list[str]  # the clicked item ids that went into the history mean, newest first
    published_ms: int  # the manifest's last publish (freshness of the embeddings)


class ModelReader:
    """Reads model versions and computes user vectors and scores with numpy."""

    def __init__(self, client: redis.Redis, settings: Settings, sequences: SequenceReader) -> None:
        self.store = ModelStore(client, settings.redis.shards)
        self.history = settings.join.history
        self._sequences = sequences
        self._versions: dict[str, VersionParts] = {}
        self._last: str | None = None

    def _version(self, version: str) -> VersionParts:
        cached = self._versions.get(version)
        if cached is None:
            pipe = self.store.redis.pipeline(transaction=False)
            for method, args in self.load_ops(version):
                getattr(pipe, method)(*args)
            cached = self.remember(version, *pipe.execute())
        self._last = version
        return cached

    def cached(self, version: str) -> VersionParts | None:
        """The immutable parts of ``version`` if already loaded (no IO)."""
        return self._versions.get(version)

    def last_version(self) -> str | None:
        """The version the last read used (the guess for the next one; no IO)."""
        return self._last

    def load_ops(self, version: str) -> list[tuple[str, tuple[Any, ...]]]:
        """``(method, args)`` of the reads :meth:`remember` needs (for a caller's pipeline)."""
        return [("get", (model_key(version, "manifest"),)), ("get", (model_key(version, "weights"),)),
                ("hgetall", (model_key(version, "defaults"),))]

    def remember(self, version: str, manifest: Any, weights: Any, defaults: Any) -> VersionParts:
        """Cache the immutable parts of ``version`` from the replies of :meth:`load_ops`."""
        if not isinstance(manifest, bytes) or not isinstance(weights, bytes):
            msg = f"model version {version} is incomplete or gone (kept: {', '.join(self.store.versions())})"
            raise ModelError(msg)
        cached = VersionParts(decode_manifest(manifest), decode_weights(weights),
                          {k.decode(): unpack_vector(v) for k, v in defaults.items()})
        if len(self._versions) >= 8:
            self._versions.pop(next(iter(self._versions)))
        self._versions[version] = cached
        self._last = version
        return cached

    def version(self) -> str | None:
        """The current model version (None before the first publish)."""
        return self.store.current()

    def manifest(self) -> Manifest:
        """The current version's manifest as published last (not cached: it carries the publish time)."""
        return self.store.manifest(self.require(self.store.current()))

    @staticmethod
    def require(version: str | None) -> str:
        if version is None:
            msg = "no model version is published yet; start `recstream trainer` or run `recstream full-update`"
            raise ModelError(msg)
        return version

    def _first_round(self, user_id: str, with_history: bool) -> tuple[str, bytes | None, list[Any]]:
        """``(version, the user's embedding or None, its click rows)``, all under one version."""
        guess = self._last or self.store.current()
        for _ in range(3):
            version = self.require(guess)
            pipe = self.store.redis.pipeline(transaction=False)
            pipe.get(MODEL_CURRENT)
            pipe.hget(self.store.embedding_key("user", user_id, version), user_id)
            queued = with_history and self._sequences.queue_last_n(pipe, user_id, "click", self.history)
            current, raw, *rest = pipe.execute()
            current = current.decode() if isinstance(current, bytes) else None
            if current == version:
                return version, raw, (rest[0] if queued else [])
            guess = current
        msg = "the model version kept changing while reading"
        raise ModelError(msg)

    def temperature(self, version: str) -> float:
        """The score temperature of ``version`` (score = cosine / temperature)."""
        return self._version(version).weights.temperature

    def user_embedding(self, user_id: str) -> np.ndarray:
        """The user's ID embedding under the current version (the shared row if it has none)."""
        version, raw, _ = self._first_round(user_id, with_history=False)
        return unpack_vector(raw) if raw is not None else self._version(version).defaults["user"]

    def item_embeddings(self, item_ids: Sequence[str]) -> np.ndarray:
        """``(len(ids), dim)`` item ID embeddings under the current version (shared row where none)."""
        version = self.require(self.store.current())
        return self._rows("item", item_ids, version)

    def _rows(self, kind: Literal["user", "item"], ids: Sequence[str], version: str) -> np.ndarray:
        v = self._version(version)
        raws = self._gather(ids, lambda i: self.store.embedding_key(kind, i, version))
        default = v.defaults[kind]
        if not raws:
            return np.zeros((0, default.shape[0]), np.float32)
        return np.stack([unpack_vector(r) if r is not None else default for r in raws])

    def user_vector(self, user_id: str) -> UserVector:
        """The current version's user tower over the fresh user embedding and the user's last-N clicks
        (``join.history`` of them, as the trainer saw them in samples)."""
        version, raw, click_rows = self._first_round(user_id, with_history=True)
        v = self._version(version)
        history = [e.item_id for e in entries_of(click_rows)]
        user = unpack_vector(raw) if raw is not None else v.defaults["user"]
        mean = history_mean(self._rows("item", history, version), v.manifest.dim)
        vec = user_vectors(v.weights, user[None, :], mean)[0]
        return UserVector(vec, version, raw is not None, history, v.manifest.last_publish_ms)

    def score(self, user_id: str, item_ids: Sequence[str]) -> list[float]:
        """cosine / temperature of the user's vector and each item's published vector (0.0 for an item
        without one)."""
        uv = self.user_vector(user_id)
        raws = self._item_vectors(item_ids, uv.version)
        dim = uv.vector.shape[0]
        items = np.stack([unpack_vector(r) if r is not None else np.zeros(dim, np.float32) for r in raws]) \
            if raws else np.zeros((0, dim), np.float32)
        out: list[float] = scores(uv.vector, items, self._version(uv.version).weights.temperature).tolist()
        return out

    def _item_vectors(self, item_ids: Sequence[str], version: str) -> list[bytes | None]:
        return self._gather(item_ids, lambda i: self.store.vector_key(i, version))

    def _gather(self, ids: Sequence[str], key_of: Callable[[str], str]) -> list[Any]:
        """One field per id, one ``HMGET`` per shard hash, in one round trip."""
        if not ids:
            return []
        g = Gather(ids, key_of)
        pipe = self.store.redis.pipeline(transaction=False)
        for op in g.ops:
            getattr(pipe, op.method)(*op.args)
        return g.values(pipe.execute())
