"""Model versions in Redis, write side: incremental deltas, complete new versions, the pointer, rollback.

- :meth:`ModelPublisher.publish_delta` writes the rows touched since the last publish (user and item
  embeddings, the touched items' vectors), the manifest and the trainer's newly trained sample ids in
  **one pipelined round trip** into the current version.
- :meth:`ModelPublisher.create_version` writes a complete version (every row, weights, default rows,
  manifest), and only then switches ``rs2:model:current`` to it (one ``SET``: atomic for readers) and
  deletes the versions beyond ``learning.keep_versions``.
- :meth:`ModelPublisher.rollback` points ``current`` at a kept older version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from filters.manifest import Manifest, encode_manifest
from filters.model_store import ModelStore, pack_vector
from filters.towers import TowerWeights, encode_weights
from infra.errors import ModelError
from infra.keys import MODEL_CURRENT, MODEL_VERSIONS, KeyLayout, model_key
from infra.redis_client import write_packed
from infra.resp import RowsHset

__all__ = ["Family", "ModelPublisher", "Rows"]

_CHUNK = 20_000  # fields per HSET command


_EMPTY = np.zeros((0, 0), dtype=np.float32)


@dataclass
class Family:
    """Rows of one family: ``ids[k]`` owns ``matrix[k]``."""

    ids: Sequence[str] = ()
    matrix: np.ndarray = field(default_factory=lambda: _EMPTY)
    shards: np.ndarray | None = None  # shard_of(ids[k], shard_count) when the caller knows it (no re-hashing)
    shard_count: int = 0

    def hsets(self, shards: int, key_of: Callable[[int], str], chunk: int = _CHUNK) -> Iterator[RowsHset]:
        """``HSET`` commands (at most ``chunk`` fields each) writing every row into its shard's hash:
        rows grouped by shard (with numpy, unless they come grouped, as the trainer's do), vectors as
        float32 bytes, ids as they are."""
        n = len(self.ids)
        if not n:
            return
        known = self.shards is not None and self.shard_count == shards
        shard = self.shards if known and self.shards is not None else np.array(
            KeyLayout(shards).shard_list(list(self.ids)), np.int64)
        matrix, ids = self.matrix, self.ids
        if np.any(shard[1:] < shard[:-1]):  # not grouped yet: one gather (the trainer's rows come grouped)
            order = np.argsort(shard, kind="stable")
            shard, matrix = shard[order], matrix[order]
            ids = list(itemgetter(*order.tolist())(ids)) if n > 1 else list(ids)  # in C, not a comprehension
        bounds = np.searchsorted(shard, np.arange(shards + 1)).tolist()
        matrix = np.ascontiguousarray(matrix, dtype="<f4")
        for s in range(shards):
            for start in range(bounds[s], bounds[s + 1], chunk):
                stop = min(start + chunk, bounds[s + 1])
                yield RowsHset(key_of(s), ids[start:stop], matrix[start:stop])


@dataclass
class Rows:
    """Rows to publish: user and item embeddings, item vectors."""

    users: Family = field(default_factory=Family)
    items: Family = field(default_factory=Family)
    vectors: Family = field(default_factory=Family)

    def __len__(self) -> int:
        return len(self.users.ids) + len(self.items.ids) + len(self.vectors.ids)


class ModelPublisher:
    """Writes versions through a :class:`~filters.model_store.ModelStore`'s client and key layout."""

    def __init__(self, store: ModelStore, keep_versions: int) -> None:
        self.store = store
        self.keep = keep_versions

    def _hsets(self, rows: Rows, version: str) -> Iterator[RowsHset]:
        keys = self.store.keys
        yield from rows.users.hsets(keys.shards, lambda s: keys.embedding("user", s, version))
        yield from rows.items.hsets(keys.shards, lambda s: keys.embedding("item", s, version))
        yield from rows.vectors.hsets(keys.shards, lambda s: keys.item_vectors(s, version))

    def publish_delta(self, manifest: Manifest, rows: Rows, extra: Mapping[str, bytes] | None = None,
                      extra_ttl_ms: int = 0) -> None:
        """Touched rows + manifest (+ ``extra``: list key -> blob appended, e.g. trained sample ids) into
        ``manifest.version``, one round trip."""
        tail: list[Sequence[Any]] = []
        for key, blob in (extra or {}).items():
            tail.append(("RPUSH", key, blob))
            if extra_ttl_ms:
                tail.append(("PEXPIRE", key, extra_ttl_ms))
        tail.append(("SET", model_key(manifest.version, "manifest"), encode_manifest(manifest)))
        write_packed(self.store.redis, chain(self._hsets(rows, manifest.version), tail))  # built while sent

    def create_version(self, manifest: Manifest, weights: TowerWeights, defaults: Mapping[str, np.ndarray],
                       rows: Rows) -> None:
        """Write a complete version, then make it current and drop versions beyond the kept ones."""
        redis = self.store.redis
        redis.delete(*self.store.version_keys(manifest.version))  # a half-written earlier attempt
        write_packed(redis, self._hsets(rows, manifest.version))  # streamed: packed and sent ~1 MB at a time
        pipe = redis.pipeline(transaction=False)
        pipe.set(model_key(manifest.version, "weights"), encode_weights(weights))
        pipe.hset(model_key(manifest.version, "defaults"),
                  mapping={k: pack_vector(v) for k, v in defaults.items()})
        pipe.set(model_key(manifest.version, "manifest"), encode_manifest(manifest))
        pipe.zadd(MODEL_VERSIONS, {manifest.version: manifest.created_ms})
        pipe.execute()
        redis.set(MODEL_CURRENT, manifest.version)
        self._trim(manifest.version)

    def _trim(self, current: str) -> None:
        versions = self.store.versions()
        for old in versions[: max(0, len(versions) - self.keep)]:
            if old != current:
                self.store.redis.delete(*self.store.version_keys(old))
                self.store.redis.zrem(MODEL_VERSIONS, old)

    def rollback(self, version: str) -> None:
        """Serve ``version`` again (it must be kept); the trainer restarts its chain from it."""
        if version not in self.store.versions():
            msg = f"model version {version} is not kept (kept: {', '.join(self.store.versions()) or 'none'})"
            raise ModelError(msg)
        self.store.redis.set(MODEL_CURRENT, version)
