"""The trainer's sample dedup: every sample id trained within the horizon, in event-time buckets.

The samples topic can carry a sample twice (the worker re-emits after a crash or a rewind, see
docs/samples.md), so the trainer drops a sample whose id it has trained within ``horizon_ms`` of event
time (the sample's ``ts``). Ids are kept as 64-bit MurmurHash3 values (seed :data:`SEED`) in buckets of
``horizon_ms / BUCKETS``; a bucket older than the horizon behind the newest ``ts`` is dropped whole, so
memory is bounded by the samples of one horizon (8 bytes each in the persisted form).

The ids trained since the last publish are handed to the publisher (:meth:`SampleDedup.take_new`) and
written with the published rows in the same round trip, so after a SIGKILL the restarted trainer
reloads exactly the ids whose training reached Redis.

>>> d = SampleDedup(horizon_ms=60_000)
>>> d.fresh("s1-a", 1_000), d.fresh("s1-a", 1_500), d.fresh("s1-b", 2_000)
(True, False, True)
>>> new = d.take_new(); sorted(new) == [0]
True
>>> e = SampleDedup(horizon_ms=60_000); e.load({0: [new[0]]}); e.fresh("s1-a", 3_000)
False
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import mmh3
import numpy as np

__all__ = ["BUCKETS", "SEED", "SampleDedup", "id_hash"]

SEED = 0x5A3D_1E02
BUCKETS = 6


def id_hash(sample_id: str) -> int:
    """64-bit MurmurHash3 (x64 128, first half) of a sample id, as a signed int64.

    >>> id_hash("s1-a") == id_hash("s1-a"), id_hash("s1-a") == id_hash("s1-b")
    (True, False)
    """
    return int(mmh3.hash64(sample_id, SEED, signed=True)[0])


class SampleDedup:
    """Sample ids trained within ``horizon_ms`` of event time."""

    def __init__(self, horizon_ms: int) -> None:
        self.width = max(1, horizon_ms // BUCKETS)
        self.horizon_ms = horizon_ms
        self._bucket_of: dict[int, int] = {}  # id hash -> its bucket: one lookup per sample
        self._buckets: dict[int, list[int]] = {}  # bucket -> its id hashes (to forget them when it expires)
        self._new: dict[int, list[int]] = {}
        self._newest = -1

    def __len__(self) -> int:
        return len(self._bucket_of)

    def fresh(self, sample_id: str, ts: int) -> bool:
        """True (and remembered) the first time ``sample_id`` is seen within the horizon."""
        h = id_hash(sample_id)
        if h in self._bucket_of:
            return False
        bucket = ts // self.width
        self._remember(h, bucket)
        self._new.setdefault(bucket, []).append(h)
        if ts > self._newest:
            self._newest = ts
            self._expire()
        return True

    def _remember(self, h: int, bucket: int) -> None:
        self._bucket_of[h] = bucket
        ids = self._buckets.get(bucket)
        if ids is None:
            self._buckets[bucket] = [h]
        else:
            ids.append(h)

    def _expire(self) -> None:
        oldest = (self._newest - self.horizon_ms) // self.width
        if not self._buckets or min(self._buckets) >= oldest:
            return
        bucket_of = self._bucket_of
        for bucket in [b for b in self._buckets if b < oldest]:
            for h in self._buckets.pop(bucket):
                if bucket_of.get(h) == bucket:
                    del bucket_of[h]

    def take_new(self) -> dict[int, bytes]:
        """``bucket -> packed int64 ids`` remembered since the last call (for persisting)."""
        out = {b: np.asarray(ids, dtype="<i8").tobytes() for b, ids in self._new.items()}
        self._new.clear()
        return out

    def load(self, persisted: Mapping[int, Iterable[bytes]]) -> None:
        """Remember the ids of persisted buckets (``bucket -> packed blobs``)."""
        for bucket, blobs in persisted.items():
            for blob in blobs:
                for h in np.frombuffer(blob, dtype="<i8").tolist():
                    if h not in self._bucket_of:
                        self._remember(h, bucket)
            self._newest = max(self._newest, (bucket + 1) * self.width - 1)
        self._expire()

    def live_buckets(self, newest_ts: int) -> range:
        """The bucket numbers that can still hold ids within the horizon behind ``newest_ts``."""
        last = newest_ts // self.width
        return range(max(0, (newest_ts - self.horizon_ms) // self.width), last + 1)
