"""Top-k over a model version's item vectors: exact below a size threshold, an HNSW index above it.

Item vectors are unit vectors (the item tower L2-normalises), so the inner product is the cosine and the
top-k by inner product is the top-k by score. Below ``exact_below`` items a numpy matrix product with
``argpartition`` is exact and fast enough; above it an HNSW graph (faiss ``IndexHNSWFlat``, inner-product
metric) answers in well under a millisecond at a small recall cost (measured by ``recstream bench
serving``). The exposure filter is applied by the caller *after* the search, over-fetching: ANN search
with a filter is unreliable (faiss #3186).

>>> vecs = np.eye(3, dtype=np.float32)
>>> index = ItemIndex(["a", "b", "c"], vecs, "v1")
>>> index.search(np.array([0.1, 0.9, 0.0], np.float32), 2)
[('b', 0.9...), ('a', 0.1...)]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["EXACT_BELOW", "ItemIndex"]

EXACT_BELOW = 20_000
HNSW_M = 32
EF_CONSTRUCTION = 80
EF_SEARCH_MIN = 64


class ItemIndex:
    """The item vectors of one model version, searchable by inner product."""

    def __init__(self, ids: Sequence[str], vectors: np.ndarray, version: str, exact_below: int = EXACT_BELOW,
                 threads: int = 1) -> None:
        self.ids = list(ids)
        values = np.ascontiguousarray(vectors, dtype=np.float32)
        # (n, d) as given; a flat array is split into len(ids) rows; an empty catalogue stays (0, d)
        self.vectors = values.reshape(len(self.ids), values.shape[-1] if values.ndim == 2 else -1)
        self.version = version
        self.built_s = 0.0
        self._hnsw: Any = None
        if len(self.ids) >= exact_below:
            started = time.perf_counter()
            self._hnsw = _hnsw(self.vectors, threads)
            self.built_s = time.perf_counter() - started

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def exact(self) -> bool:
        """True when searches are brute force (small catalogues)."""
        return self._hnsw is None

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` items with the largest inner product with ``query``, best first."""
        k = min(k, len(self.ids))
        if k <= 0:
            return []
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if self._hnsw is None:
            scores = (self.vectors @ q[0])
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            return [(self.ids[i], float(scores[i])) for i in top]
        self._hnsw.hnsw.efSearch = max(EF_SEARCH_MIN, 2 * k)
        scores, rows = self._hnsw.search(q, k)
        return [(self.ids[r], float(s)) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0]

    def exact_search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Brute force whatever the size (the reference the ANN's recall is measured against)."""
        return ItemIndex(self.ids, self.vectors, self.version, exact_below=len(self.ids) + 1).search(query, k)


def _hnsw(vectors: np.ndarray, threads: int) -> Any:
    import faiss  # imported only for catalogues large enough to need it

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.add(vectors)
    return index
