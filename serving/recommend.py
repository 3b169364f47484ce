"""``recommend(user_id, k)``: user vector → top-k item vectors of the same model version → exposure filter.

The index (:class:`~serving.ann.ItemIndex`) holds one version's published item vectors. It is rebuilt
off the request path by :meth:`Recommender.refresh` — call it from a timer or let :meth:`start` run it
in a daemon thread every ``refresh_s`` — when ``rs2:model:current`` names another version, or when the
index is older than ``refresh_s`` (incremental publishes keep moving the touched items' vectors). A
request whose user vector comes from a version no index holds yet builds that index itself, once.

Exposure: the search over-fetches ``overfetch × k`` items, drops those the user has surely been shown
(``filter_unseen``), and doubles the fetch until ``k`` unseen items remain or the catalogue is exhausted,
so the filter can never empty the list.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np

from serving.ann import EXACT_BELOW, ItemIndex
from serving.exposure import ExposureReader
from serving.model import ModelReader

__all__ = ["Recommendation", "Recommender", "best_unseen", "search_steps"]


@dataclass(frozen=True)
class Recommendation:
    """``items`` best first with their scores (cosine / temperature), and what they came from."""

    items: list[tuple[str, float]]
    version: str
    exact: bool  # brute force (small catalogue or explicit candidates) rather than the ANN index
    fetched: int  # items searched before the exposure filter


class Recommender:
    """Top-k recommendation over the published item vectors (thread-safe)."""

    def __init__(self, model: ModelReader, exposure: ExposureReader, refresh_s: float = 60.0,
                 exact_below: int = EXACT_BELOW, overfetch: int = 4) -> None:
        self.model, self.exposure = model, exposure
        self.refresh_s, self.exact_below, self.overfetch = refresh_s, exact_below, overfetch
        self._index: ItemIndex | None = None
        self._built_at = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _build(self, version: str) -> ItemIndex:
        rows = self.model.store.all_rows("vector", version)
        ids = sorted(rows)
        vectors = np.stack([rows[i] for i in ids]) if ids else np.zeros((0, 1), np.float32)
        index = ItemIndex(ids, vectors, version, self.exact_below)
        with self._lock:
            self._index, self._built_at = index, time.monotonic()
        return index

    def refresh(self) -> None:
        """Rebuild the index if the current version changed or the index is older than ``refresh_s``."""
        version = self.model.version()
        index = self._index
        stale = index is None or index.version != version or time.monotonic() - self._built_at >= self.refresh_s
        if version is not None and stale:
            self._build(version)

    def start(self) -> None:
        """Refresh in a daemon thread every ``refresh_s / 4`` seconds until :meth:`stop`."""
        def loop() -> None:
            while not self._stop.wait(self.refresh_s / 4):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="recstream-ann-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the refresh thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def held(self, version: str) -> ItemIndex | None:
        """The index of ``version`` if it is the one held and younger than ``refresh_s`` (no IO)."""
        index = self._index
        fresh = index is not None and time.monotonic() - self._built_at < self.refresh_s
        return index if fresh and index is not None and index.version == version else None

    def index_for(self, version: str) -> ItemIndex:
        """The index of ``version`` (built now if the one held is of another version)."""
        index = self._index
        return index if index is not None and index.version == version else self._build(version)

    def refresh_for(self, version: str) -> ItemIndex:
        """The index of ``version``, rebuilt now unless :meth:`held` has it (the async client's path)."""
        return self.held(version) or self._build(version)

    def recommend(self, user_id: str, k: int, candidates: Sequence[str] | None = None) -> Recommendation:
        """``k`` items the user has not been shown, best first."""
        uv = self.model.user_vector(user_id)
        if candidates is not None:
            unseen = set(self.exposure.filter_unseen(user_id, candidates))
            best = best_unseen(candidates, self.model.score(user_id, candidates), unseen, k)
            return Recommendation(best, uv.version, True, len(candidates))
        index = self.index_for(uv.version)
        steps = search_steps(index, uv.vector, k, self.overfetch, self.model.temperature(uv.version))
        ids = next(steps)
        while True:
            try:
                ids = steps.send(set(self.exposure.filter_unseen(user_id, ids)))
            except StopIteration as done:
                kept, fetched = done.value
                return Recommendation(kept, uv.version, index.exact, fetched)


def best_unseen(candidates: Sequence[str], scores: Sequence[float], unseen: set[str],
                k: int) -> list[tuple[str, float]]:
    """The ``k`` best-scored ``candidates`` that are in ``unseen``, best first (ties keep the given order).

    >>> best_unseen(["a", "b", "c", "d"], [0.1, 0.9, 0.5, 0.7], {"a", "c", "d"}, 2)
    [('d', 0.7), ('c', 0.5)]
    """
    scored = sorted(zip(candidates, scores, strict=True), key=lambda x: -x[1])
    return [(c, s) for c, s in scored if c in unseen][:k]


def search_steps(index: ItemIndex, vector: np.ndarray, k: int, overfetch: int,
                 temperature: float) -> Generator[list[str], set[str], tuple[list[tuple[str, float]], int]]:
    """The over-fetching search, sans-IO: yields the ids to check against the exposure filter, is sent the
    unseen ones, and returns ``(k best unseen (id, score), items searched)`` — so the sync and the async
    client drive the same loop with their own ``filter_unseen``."""
    fetch = max(k, 1) * overfetch
    while True:
        found = index.search(vector, fetch)
        unseen = yield [i for i, _ in found]
        kept = [(i, s / temperature) for i, s in found if i in unseen]
        if len(kept) >= k or fetch >= len(index):
            return kept[:k], len(found)
        fetch *= 2
