"""A stand-alone writer of the exposure filters, for benchmarks, tests and tools.

The worker adds impressions inside its one-call-per-shard batch script (``user_batch.lua``); this adapter
runs the same Bloom code (``bloom_lib.lua``) through ``exposure_add.lua``, one call per user, all users
of a call in one pipeline. It is idempotent: an item counts as added only if one of its bits flipped.

Event time only: slice membership comes from each impression's ``ts``, expiry from the ``watermark_ms``
the caller passes (the partition watermark). The wall clock is used for one thing, the safety TTL
``retention + slice length + safety_ttl_days`` set when a bitmap or slice is created, which therefore
can never delete a slice still inside the retention of the stream being (re)played.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from filters.bloom import item_hashes
from filters.events import check_user
from filters.slices import SlicePlan
from infra.errors import InputError
from infra.keys import KeyLayout
from infra.lua import Script
from infra.settings import Settings


class ExposureWriter:
    """Adds impressions to the users' time-sliced exposure filters (one Lua call per user per batch).

    Usage, once per batch, after the batch's watermark is known::

        writer = ExposureWriter(connect(settings.redis.effective_url, cluster=settings.redis.cluster), settings)
        writer.add({"u1": [("i1", ts1), ("i2", ts2)]}, watermark_ms=partition_watermark)
    """

    def __init__(self, redis_client: redis.Redis, settings: Settings) -> None:
        """Load the add script into ``redis`` (one round trip). ``settings.bloom`` fixes the sizes."""
        self.redis = redis_client
        self.bloom = settings.bloom
        self.plan = SlicePlan.from_settings(settings.bloom)
        self.script = Script("bloom_lib.lua", "exposure_add.lua")
        self.keys = KeyLayout(settings.redis.shards)
        self._table = self.plan.lua_table
        self._ttl_s = self.plan.key_ttl_s(self.bloom.safety_ttl_days)
        self.deleted_slices = 0
        item_hashes(["warm-up"])  # compile the hash loop (or load it from numba's cache) before the first batch

    def add(self, impressions: Mapping[str, Sequence[tuple[str, int]]], watermark_ms: int) -> int:
        """Add ``user_id -> [(item_id, ts_ms), ...]``; returns how many impressions were new.

        Impressions whose slice is already out of retention (``slice end ≤ watermark − R``) are skipped.
        Replays of the same impressions return 0 and leave the bitmaps unchanged. The caller counts
        the result into ``recstream_bloom_adds``.
        """
        if not isinstance(watermark_ms, int):
            msg = f"watermark_ms must be an int (epoch ms), got {watermark_ms!r}"
            raise InputError(msg)
        plan, version = self.plan, self.bloom.hash_version
        users: list[str] = []
        items: list[str] = []
        starts: list[int] = []
        bounds: list[int] = [0]
        for user_id, pairs in impressions.items():
            check_user(user_id)
            for pair in pairs:
                try:
                    item_id, ts = pair
                except (TypeError, ValueError):
                    msg = f"impressions must be (item_id, ts_ms) pairs, got {pair!r} for user {user_id!r}"
                    raise InputError(msg) from None
                if not isinstance(item_id, str):
                    msg = f"impression item ids must be str, got {item_id!r} for user {user_id!r}"
                    raise InputError(msg)
                if not isinstance(ts, int) or isinstance(ts, bool):
                    msg = f"impression ts must be an int (epoch ms), got {ts!r} for user {user_id!r}"
                    raise InputError(msg)
                start = plan.writable_start(ts, watermark_ms)
                if start is not None:
                    items.append(item_id)
                    starts.append(start)
            users.append(user_id)
            bounds.append(len(items))
        if not items:
            return 0
        h1l, h2l, h3l = item_hashes(items, version).tolist()
        calls: list[tuple[list[str], list[Any]]] = []
        for u, user_id in enumerate(users):
            lo, hi = bounds[u], bounds[u + 1]
            if lo == hi:
                continue
            args: list[Any] = [
                self.keys.slice_key_prefix(user_id, version), watermark_ms, plan.retention_ms, plan.slice_ms,
                self._ttl_s, self._table,
            ]
            quads = zip(starts[lo:hi], h1l[lo:hi], h2l[lo:hi], h3l[lo:hi], strict=True)
            args.extend(itertools.chain.from_iterable(quads))
            calls.append(([self.keys.bloom_index(user_id, version)], args))
        return self._run(calls)

    def _run(self, calls: list[tuple[list[str], list[Any]]]) -> int:
        added = 0
        for res in self.script.run(self.redis, calls):
            added += int(res[0])
            self.deleted_slices += int(res[1])
        return added
