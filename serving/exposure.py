"""Read path of the exposure filters: ``filter_unseen`` and ``seen`` for one user and many candidates.

One Redis round trip per call: the read-only script ``filters/exposure_read.lua`` returns the bitmaps of
every live (sub-)slice with their stored parameters; the membership test then runs vectorised in numpy
(one MurmurHash3 digest per candidate, the bitmaps bit-transposed so one word covers up to 64 slices;
both in compiled loops, filters/murmur.py and filters/union.py).

A slice is live at ``at`` (epoch ms, default now) iff ``start ≤ at`` and ``end > at − retention``: an
exposure is reported seen for at least ``retention_days`` after it happened and forgotten once its whole
slice is older than that (see docs/exposure.md).

>>> import numpy as np
>>> from filters.bloom import BloomFilter
>>> f = BloomFilter.for_capacity(200, 0.001)
>>> _ = f.add_many(["i1", "i2"])
>>> reply = [f"{f.m},{f.k},200".encode(), f.to_bytes()]
>>> seen_in_reply(reply, ["i1", "i9", "i2"]).tolist()
[True, False, True]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import redis

from filters.bloom import BoolArray, Hashes, item_hashes
from filters.events import check_user
from filters.slices import SlicePlan, decode_params
from filters.union import union_contains
from infra.clock import Clock, now_ms
from infra.errors import InputError
from infra.keys import KeyLayout
from infra.lua import Script
from infra.metrics import (
    BLOOM_BYTES_PER_USER,
    BLOOM_CHECKS,
    BLOOM_ESTIMATED_FPR,
    BLOOM_FILTERED,
    BLOOM_SLICES_PER_USER,
)
from infra.redis_client import connect
from infra.settings import Settings, load_settings

_PARAMS: dict[bytes, tuple[int, int, int]] = {}
#: The fill-ratio FPR estimate (a popcount of every bitmap) is observed on one query in this many.
FPR_SAMPLE_EVERY = 16
_queries = itertools.count()


def _params(raw: bytes) -> tuple[int, int, int]:
    p = _PARAMS.get(raw)
    if p is None:
        if len(_PARAMS) > 1024:
            _PARAMS.clear()
        p = _PARAMS[raw] = decode_params(raw)
    return p


def seen_in_reply(
    reply: Sequence[bytes], ids: Sequence[str], hash_version: int = 1, observe: bool = True
) -> BoolArray:
    """Pure part of a query: which ``ids`` are in any bitmap of a read-script reply.

    ``reply`` is the flat ``[params, bitmap, params, bitmap, ...]`` list. Raises :class:`InputError`
    unless ``ids`` is a sequence of ``str``. See :func:`seen_in_hashes` for ``observe``.
    """
    return seen_in_hashes(reply, item_hashes(ids, hash_version, "candidate ids"), observe)


def seen_in_hashes(reply: Sequence[bytes], hashes: Hashes, observe: bool = True) -> BoolArray:
    """:func:`seen_in_reply` for already hashed ids (columns of ``hashes``).

    Bitmaps are grouped by their parameters (normally one group: sub-slice 0 of every live slice)
    and tested group-wise. With ``observe`` the slice and byte histograms are updated, and on one
    query in :data:`FPR_SAMPLE_EVERY` the estimated-FPR histogram (it needs a popcount of every bitmap).
    """
    n = hashes.shape[1]
    if not reply or n == 0:
        if observe:
            BLOOM_SLICES_PER_USER.observe(0)
            BLOOM_BYTES_PER_USER.observe(0)
            BLOOM_ESTIMATED_FPR.observe(0.0)
        return np.zeros(n, dtype=np.bool_)
    groups: dict[bytes, list[bytes]] = {}
    for raw, bitmap in zip(reply[::2], reply[1::2], strict=True):
        groups.setdefault(raw, []).append(bitmap)
    seen: BoolArray | None = None
    for raw, bitmaps in groups.items():
        m, k, _cap = _params(raw)
        hit = union_contains(bitmaps, m, k, hashes)
        seen = hit if seen is None else seen | hit
    if observe:
        BLOOM_SLICES_PER_USER.observe(len(reply) // 2)
        BLOOM_BYTES_PER_USER.observe(sum(map(len, reply[1::2])))
        if next(_queries) % FPR_SAMPLE_EVERY == 0:
            BLOOM_ESTIMATED_FPR.observe(estimated_query_fpr(reply))
    assert seen is not None
    return seen


def estimated_query_fpr(reply: Sequence[bytes]) -> float:
    """FPR of a query over the reply's bitmaps, from each bitmap's own fill ratio: 1 − Π(1 − fill^k).

    >>> estimated_query_fpr([])
    0.0
    """
    not_fp = 1.0
    for raw, bitmap in zip(reply[::2], reply[1::2], strict=True):
        m, k, _cap = _params(raw)
        fill = int.from_bytes(bitmap, "big").bit_count() / m
        not_fp *= 1.0 - fill**k
    return 1.0 - not_fp if reply else 0.0


def _as_seq(ids: Iterable[str]) -> Sequence[str]:
    if isinstance(ids, list | tuple | str | bytes):
        return ids  # a lone str/bytes is rejected by item_hashes with a clear message
    return list(ids)


class ExposureReader:
    """``filter_unseen`` / ``seen`` against the exposure filters in Redis (mounted on FeatureClient)."""

    def __init__(self, redis_client: redis.Redis, settings: Settings, clock: Clock = now_ms) -> None:
        self.redis = redis_client
        self.clock = clock
        self.bloom = settings.bloom
        self.plan = SlicePlan.from_settings(settings.bloom)
        self.keys = KeyLayout(settings.redis.shards)
        self.script = Script("exposure_read.lua")
        # compile the hash and membership loops (or load them from numba's disk cache) now, so that
        # the first query does not pay for it
        seen_in_reply([b"8,1,1", b"\0"], ["warm-up"], observe=False)

    @classmethod
    def from_url(cls, redis_url: str | None = None, settings: Settings | None = None) -> ExposureReader:
        """Connect to ``redis_url`` (None = ``settings.redis.effective_url``)."""
        settings = settings or load_settings()
        url = redis_url or settings.redis.effective_url
        return cls(connect(url, cluster=settings.redis.cluster, check=False), settings)

    def read_call(self, user_id: str, at: int | None = None) -> tuple[Any, ...]:
        """The ``EVALSHA`` arguments of the read script for ``user_id`` at ``at`` (for a caller's pipeline;
        decode the reply with :func:`seen_in_hashes`)."""
        check_user(user_id)
        if at is None:
            at = self.clock()
        elif not isinstance(at, int) or isinstance(at, bool):
            msg = f"at must be epoch ms (int) or None, got {at!r}"
            raise InputError(msg)
        v = self.bloom.hash_version
        args = (self.keys.slice_key_prefix(user_id, v), at, self.plan.retention_ms, self.plan.slice_ms)
        return (self.script.sha, 1, self.keys.bloom_index(user_id, v), *args)

    def live_bitmaps(self, user_id: str, at: int | None = None) -> list[bytes]:
        """The raw read-script reply for ``user_id`` at ``at``: ``[params, bitmap, ...]`` (one round trip)."""
        _sha, _n, key, *args = self.read_call(user_id, at)
        reply: list[bytes] = self.script(self.redis, [key], args)
        return reply

    def seen(self, user_id: str, ids: Iterable[str], at: int | None = None) -> list[bool]:
        """For each id (input order): was it exposed to ``user_id`` in a slice live at ``at``?"""
        ids = _as_seq(ids)
        hashes = self._hashes(ids)
        if not ids:
            return []
        out: list[bool] = self._mask(self.live_bitmaps(user_id, at), hashes).tolist()
        return out

    def filter_unseen(self, user_id: str, candidate_ids: Iterable[str], at: int | None = None) -> list[str]:
        """The candidates not (probably) exposed to ``user_id`` yet, input order kept."""
        candidate_ids = _as_seq(candidate_ids)
        hashes = self._hashes(candidate_ids)
        if not candidate_ids:
            return []
        return self._unseen(self.live_bitmaps(user_id, at), candidate_ids, hashes)

    def filter_unseen_in_reply(self, reply: Sequence[bytes], candidate_ids: Sequence[str]) -> list[str]:
        """The compute part of :meth:`filter_unseen` on an already fetched reply (benchmarks, tests)."""
        return self._unseen(reply, candidate_ids, self._hashes(candidate_ids))

    def _hashes(self, ids: Sequence[str]) -> Hashes:
        """Hash (and so validate) the candidates before anything is asked of Redis."""
        return item_hashes(ids, self.bloom.hash_version, "candidate ids")

    def _mask(self, reply: Sequence[bytes], hashes: Hashes) -> BoolArray:
        BLOOM_CHECKS.inc(hashes.shape[1])
        return seen_in_hashes(reply, hashes)

    def _unseen(self, reply: Sequence[bytes], candidate_ids: Sequence[str], hashes: Hashes) -> list[str]:
        unseen = ~self._mask(reply, hashes)
        BLOOM_FILTERED.inc(len(candidate_ids) - int(np.count_nonzero(unseen)))
        return list(itertools.compress(candidate_ids, unseen.view(np.uint8).tobytes()))
