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

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from filters.manifest import Manifest, encode_manifest
from filters.model_store import ModelStore, pack_vector
from filters.towers import TowerWeights, encode_weights
from infra.errors import ModelError
from infra.keys import MODEL_CURRENT, MODEL_VERSIONS, model_key

__all__ = ["Family", "ModelPublisher", "Rows"]

_CHUNK = 20_000  # fields per pipeline when writing a complete version


_EMPTY = np.zeros((0, 0), dtype=np.float32)


@dataclass
class Family:
    """Rows of one family: ``ids[k]`` owns ``matrix[k]``."""

    ids: Sequence[str] = ()
    matrix: np.ndarray = field(default_factory=lambda: _EMPTY)

    def packed(self) -> Iterator[tuple[str, bytes]]:
        """``(id, float32 bytes)`` per row, sliced from one ``tobytes()`` of the whole matrix."""
        if not self.ids:
            return
        blob = np.ascontiguousarray(self.matrix, dtype="<f4").tobytes()
        width = len(blob) // len(self.ids)
        for k, entity_id in enumerate(self.ids):
            yield entity_id, blob[k * width:(k + 1) * width]


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

    def _by_shard(self, rows: Rows, version: str) -> dict[str, dict[str, bytes]]:
        keys = self.store.keys
        out: dict[str, dict[str, bytes]] = {}
        shards = range(keys.shards)
        targets = ((rows.users, [keys.embedding("user", s, version) for s in shards], "user"),
                   (rows.items, [keys.embedding("item", s, version) for s in shards], "item"),
                   (rows.vectors, [keys.item_vectors(s, version) for s in shards], "item"))
        for family, shard_keys, kind in targets:
            for entity_id, blob in family.packed():
                out.setdefault(shard_keys[keys.shard(kind, entity_id)], {})[entity_id] = blob
        return out

    def publish_delta(self, manifest: Manifest, rows: Rows, extra: Mapping[str, bytes] | None = None,
                      extra_ttl_ms: int = 0) -> None:
        """Touched rows + manifest (+ ``extra``: list key -> blob appended, e.g. trained sample ids) into
        ``manifest.version``, one round trip."""
        pipe = self.store.redis.pipeline(transaction=False)
        for key, mapping in self._by_shard(rows, manifest.version).items():
            pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        for key, blob in (extra or {}).items():
            pipe.rpush(key, blob)
            if extra_ttl_ms:
                pipe.pexpire(key, extra_ttl_ms)
        pipe.set(model_key(manifest.version, "manifest"), encode_manifest(manifest))
        pipe.execute()

    def create_version(self, manifest: Manifest, weights: TowerWeights, defaults: Mapping[str, np.ndarray],
                       rows: Rows) -> None:
        """Write a complete version, then make it current and drop versions beyond the kept ones."""
        redis = self.store.redis
        redis.delete(*self.store.version_keys(manifest.version))  # a half-written earlier attempt
        pipe, pending = redis.pipeline(transaction=False), 0
        for key, mapping in self._by_shard(rows, manifest.version).items():
            items = list(mapping.items())
            for start in range(0, len(items), _CHUNK):
                pipe.hset(key, mapping=dict(items[start:start + _CHUNK]))
                pending += min(_CHUNK, len(items) - start)
                if pending >= _CHUNK:
                    pipe.execute()
                    pending = 0
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
