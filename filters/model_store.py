"""Model versions in Redis, read side (shared by the trainer, ``recstream model`` and serving).

Layout (:mod:`infra.keys`): ``rs2:model:current`` names the version serving reads; each kept version
has a JSON manifest, the frozen towers' weights and the shared default rows, and per user / item shard
one hash of ID embeddings (``rs2:{u.<s>}:emb:<v>``) and per item shard one hash of item vectors
(``rs2:{i.<s>}:vec:<v>``) — float32 little-endian bytes. A version's keys are complete before the
pointer names it and are deleted only once it is no longer among the kept ones, so a reader that
resolved the pointer reads one version throughout.

>>> vec = np.arange(3, dtype=np.float32)
>>> unpack_vector(pack_vector(vec)).tolist()
[0.0, 1.0, 2.0]
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import redis

from filters.manifest import Manifest, decode_manifest
from infra.errors import ModelError
from infra.keys import MODEL_CURRENT, MODEL_VERSIONS, KeyLayout, model_key

__all__ = ["ModelStore", "pack_vector", "unpack_vector"]


def pack_vector(vec: np.ndarray) -> bytes:
    """float32 little-endian bytes of a 1-d vector."""
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def unpack_vector(raw: bytes) -> np.ndarray:
    """The vector in ``raw`` (a read-only float32 view)."""
    return np.frombuffer(raw, dtype="<f4")


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class ModelStore:
    """Reads model versions: pointer, manifests, weights, default rows, embeddings, item vectors."""

    def __init__(self, client: redis.Redis, shards: int) -> None:
        self.redis = client
        self.keys = KeyLayout(shards)

    def current(self) -> str | None:
        """The version serving reads, or None before the first one was published."""
        raw = self.redis.get(MODEL_CURRENT)
        return raw.decode() if isinstance(raw, bytes) else None

    def versions(self) -> list[str]:
        """Kept versions, oldest first."""
        return [_text(v) for v in self.redis.zrange(MODEL_VERSIONS, 0, -1)]

    def manifest(self, version: str) -> Manifest:
        """The manifest of ``version`` (:class:`~infra.errors.ModelError` when it is not kept)."""
        raw = self.redis.get(model_key(version, "manifest"))
        if not isinstance(raw, bytes):
            msg = f"model version {version} not found (kept: {', '.join(self.versions()) or 'none'})"
            raise ModelError(msg)
        return decode_manifest(raw)

    def embedding_key(self, kind: Literal["user", "item"], entity_id: str, version: str) -> str:
        """The hash holding ``entity_id``'s embedding under ``version``."""
        return self.keys.embedding(kind, self.keys.shard(kind, entity_id), version)

    def vector_key(self, item_id: str, version: str) -> str:
        """The hash holding ``item_id``'s item vector under ``version``."""
        return self.keys.item_vectors(self.keys.shard("item", item_id), version)

    def all_rows(self, kind: Literal["user", "item", "vector"], version: str) -> dict[str, np.ndarray]:
        """Every published row of one kind under ``version`` (``vector`` = item vectors); one HGETALL per
        shard in one pipeline — for the trainer's restart and the ANN index, not for requests."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.hgetall(self.keys.item_vectors(shard, version) if kind == "vector"
                         else self.keys.embedding(kind, shard, version))
        out: dict[str, np.ndarray] = {}
        for rows in pipe.execute():
            out.update((k.decode(), unpack_vector(v)) for k, v in rows.items())
        return out

    def version_keys(self, version: str) -> list[str]:
        """Every key of ``version`` (for deleting a version that is no longer kept)."""
        keys = [model_key(version, part) for part in ("manifest", "weights", "defaults")]
        for shard in range(self.keys.shards):
            keys += [self.keys.embedding("user", shard, version), self.keys.embedding("item", shard, version),
                     self.keys.item_vectors(shard, version)]
        return keys
