"""Exposure filters against the real Redis: zero false negatives, FPR budget, expiry, replay, restart."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import redis

from filters.bloom import BloomFilter, BloomParams
from filters.slices import SlicePlan
from infra.errors import InputError
from infra.keys import KeyLayout
from infra.metrics import BLOOM_CHECKS, BLOOM_FILTERED
from infra.settings import Settings
from serving.exposure import ExposureReader, seen_in_reply
from stream.exposure_writer import ExposureWriter

pytestmark = pytest.mark.integration
keys = KeyLayout(64)  # the default redis.shards of the session settings
slice_key_prefix = keys.slice_key_prefix

DAY = 86_400_000
HOUR = 3_600_000
T0 = 1_780_000_000_000 // DAY * DAY  # a UTC midnight in 2026
HISTORIC = 1_450_000_000_000 // DAY * DAY  # a UTC midnight in 2015
Impressions = dict[str, list[tuple[str, int]]]


@pytest.fixture
def settings(redis_service: Any) -> Settings:
    s: Settings = redis_service.settings
    return s


def stream(users: int, days: int, per_day: int, start: int, seed: int = 0) -> list[tuple[str, str, int]]:
    """(user, item, ts) impressions, ts-ordered; items repeat sometimes (re-impressions)."""
    rng = random.Random(seed)
    out = []
    for u in range(users):
        for d in range(days):
            n = rng.randrange(per_day // 2, per_day * 2) if per_day > 1 else per_day
            for _ in range(n):
                item = f"it{rng.randrange(50_000)}"
                out.append((f"user{u}", item, start + d * DAY + rng.randrange(DAY)))
    out.sort(key=lambda e: e[2])
    return out


def batches(
    events: list[tuple[str, str, int]], size: int, lateness: int = HOUR
) -> list[tuple[Impressions, int]]:
    out = []
    max_ts = None
    for lo in range(0, len(events), size):
        batch: Impressions = defaultdict(list)
        for user, item, ts in events[lo : lo + size]:
            batch[user].append((item, ts))
            max_ts = ts if max_ts is None else max(max_ts, ts)
        assert max_ts is not None
        out.append((dict(batch), max_ts - lateness))
    return out


def _text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def dump(client: redis.Redis, shift_ms: int = 0) -> dict[str, Any]:
    """Every exposure key's value (TTL left out), slice starts shifted by ``-shift_ms`` for comparison."""
    state: dict[str, Any] = {}

    def norm(text: str) -> str:
        out = []
        for part in text.split(":"):
            out.append(str(int(part) - shift_ms) if part.lstrip("-").isdigit() and len(part) >= 12 else part)
        return ":".join(out)

    for raw in client.scan_iter("rs2:*"):
        key = raw.decode()
        if client.type(key) == b"hash":
            h = {_text(k): _text(v) for k, v in client.hgetall(key).items()}
            shifted = {k for k in h if k.endswith(":p") or k in ("lo", "wm")}
            state[norm(key)] = {
                norm(k): ";".join(norm(p) for p in v.split(";")) if k in shifted else v
                for k, v in h.items()
            }
        else:
            state[norm(key)] = client.get(key)
    return state


def feed(writer: ExposureWriter, plan: list[tuple[Impressions, int]]) -> int:
    return sum(writer.add(batch, wm) for batch, wm in plan)


def test_zero_false_negatives_replay_and_restart(redis_client: redis.Redis, settings: Settings) -> None:
    events = stream(users=12, days=40, per_day=40, start=T0)
    plan = batches(events, 500)
    added = feed(ExposureWriter(redis_client, settings), plan)
    assert 0 < added <= len(events)
    at = events[-1][2]
    reader = ExposureReader(redis_client, settings)

    def check() -> None:
        per_user: dict[str, list[str]] = defaultdict(list)
        for user, item, ts in events:
            if ts > at - 30 * DAY:  # within retention: must be seen
                per_user[user].append(item)
        for user, items in per_user.items():
            assert all(reader.seen(user, items, at=at)), user

    check()
    snapshot = dump(redis_client)
    # replay after a "crash": same batches again, same writer, then a fresh writer (restart)
    assert feed(ExposureWriter(redis_client, settings), plan[-5:]) == 0
    assert feed(ExposureWriter(redis_client, settings), plan) == 0
    assert dump(redis_client) == snapshot
    check()
    last_user, last_item, _ = events[-1]
    assert all(ExposureReader(redis_client, settings).seen(last_user, [last_item] * 3, at=at))


def test_redis_bytes_are_the_pure_filter(redis_client: redis.Redis, settings: Settings) -> None:
    items = [f"x{j}" for j in range(150)]
    ExposureWriter(redis_client, settings).add({"u": [(i, T0 + 5) for i in items]}, T0)
    p0 = SlicePlan.from_settings(settings.bloom).sub(0)
    pure = BloomFilter(BloomParams(p0.m, p0.k))
    pure.add_many(items)
    key = keys.bloom_slice("u", 1, T0, 0)
    assert redis_client.get(key) == pure.to_bytes()
    assert redis_client.strlen(key) == p0.nbytes  # pre-sized
    assert (redis_client.memory_usage(key) or 0) < p0.nbytes + 100 + len(key)  # bitmap + key + overhead
    assert slice_key_prefix("u", 1) + f"{T0}:0" == key
    index = redis_client.hgetall(keys.bloom_index("u", 1))
    assert index[str(T0).encode()] == b"1" and index[f"{T0}:n".encode()] == b"150"
    assert index[f"{T0}:p".encode()] == f"{T0 + DAY};{p0.encode()}".encode()


def _fill(writer: ExposureWriter, user: str, per_day: int, days: int, start: int) -> list[str]:
    members = []
    for d in range(days):
        items = [f"{user}-{d}-{j}" for j in range(per_day)]
        members += items
        writer.add({user: [(i, start + d * DAY + j * 1000) for j, i in enumerate(items)]}, start + d * DAY)
    return members


@pytest.mark.parametrize(("per_day", "subs"), [(200, 1), (2000, 4)], ids=["design-load", "10x-load"])
def test_measured_fpr_over_all_live_slices(
    redis_client: redis.Redis, settings: Settings, per_day: int, subs: int
) -> None:
    """1M non-members against the exact bytes Redis holds for a user with 31 live daily slices."""
    writer = ExposureWriter(redis_client, settings)
    members = _fill(writer, "heavy", per_day, 31, T0)
    at = T0 + 30 * DAY + 12 * HOUR
    reply = ExposureReader(redis_client, settings).live_bitmaps("heavy", at)
    assert len(reply) // 2 == 31 * subs
    assert seen_in_reply(reply, members).all()
    probes = [f"nonmember-{j}" for j in range(1_000_000)]
    fpr = float(seen_in_reply(reply, probes, observe=False).mean())
    delta = settings.bloom.fpr
    assert fpr <= 1.1 * delta, fpr
    if per_day == 200:
        assert fpr >= 0.7 * delta  # the budget is actually used, not wasted bits


def test_expiry_at_slice_granularity(redis_client: redis.Redis, settings: Settings) -> None:
    writer = ExposureWriter(redis_client, settings)
    reader = ExposureReader(redis_client, settings)
    writer.add({"u": [("old", T0 + 5 * HOUR), ("new", T0 + 20 * DAY)]}, T0 + 20 * DAY)
    slice_end = T0 + DAY
    assert reader.seen("u", ["old", "new"], at=slice_end + 30 * DAY - 1) == [True, True]
    assert reader.seen("u", ["old", "new"], at=slice_end + 30 * DAY) == [False, True]
    assert reader.filter_unseen("u", ["old", "new", "x"], at=T0 + 40 * DAY) == ["old", "x"]
    # the writer deletes the slice once the watermark passes end + R, and skips expired impressions
    assert redis_client.exists(keys.bloom_slice("u", 1, T0, 0))
    assert writer.add({"u": [("late", T0 + 1), ("today", T0 + 31 * DAY)]}, slice_end + 30 * DAY) == 1
    assert not redis_client.exists(keys.bloom_slice("u", 1, T0, 0))
    assert writer.deleted_slices == 1
    index = redis_client.hgetall(keys.bloom_index("u", 1))
    assert str(T0).encode() not in index
    assert index[b"lo"] == str(T0 + 21 * DAY).encode()


def test_historic_replay_builds_the_same_filters(redis_client: redis.Redis, settings: Settings) -> None:
    """Years-old timestamps (event time + watermark) give the same filters as live traffic."""
    live = stream(users=5, days=35, per_day=30, start=T0, seed=7)
    shift = T0 - HISTORIC
    historic = [(u, i, ts - shift) for u, i, ts in live]
    feed(ExposureWriter(redis_client, settings), batches(live, 300))
    live_state = dump(redis_client)
    redis_client.flushdb()
    feed(ExposureWriter(redis_client, settings), batches(historic, 300))
    assert dump(redis_client, shift_ms=-shift) == live_state
    # the safety TTL (wall clock) never deletes data inside the replayed stream's retention
    ttl_s = redis_client.ttl(keys.bloom_index("user0", 1))
    assert ttl_s > (30 + 7) * 86_400
    at = historic[-1][2]
    recent = [i for u, i, ts in historic if u == "user0" and ts > at - 30 * DAY]
    assert all(ExposureReader(redis_client, settings).seen("user0", recent, at=at))
    # batching does not matter either: one big batch with the final watermark gives the same state
    redis_client.flushdb()
    feed(ExposureWriter(redis_client, settings), batches(historic, len(historic)))
    assert dump(redis_client, shift_ms=-shift) == live_state


def test_sub_slices_for_a_heavy_slice(redis_client: redis.Redis, settings: Settings) -> None:
    writer = ExposureWriter(redis_client, settings)
    items = [f"h{j}" for j in range(1000)]
    assert writer.add({"u": [(i, T0 + 1) for i in items]}, T0) >= 995
    index = redis_client.hgetall(keys.bloom_index("u", 1))
    assert index[str(T0).encode()] == b"3"
    assert 395 <= int(index[f"{T0}:n".encode()]) <= 400
    plan = SlicePlan.from_settings(settings.bloom)
    for i in range(3):
        assert redis_client.strlen(keys.bloom_slice("u", 1, T0, i)) == plan.sub(i).nbytes
    assert writer.add({"u": [(i, T0 + 2) for i in items]}, T0) == 0  # replay across sub-slices
    assert all(ExposureReader(redis_client, settings).seen("u", items, at=T0 + 5))


def test_noscript_fallback(redis_client: redis.Redis, settings: Settings) -> None:
    writer = ExposureWriter(redis_client, settings)
    reader = ExposureReader(redis_client, settings)
    redis_client.script_flush()
    assert writer.add({"u": [("a", T0)], "v": [("b", T0)]}, T0) == 2
    redis_client.script_flush()
    assert reader.seen("u", ["a", "b"], at=T0) == [True, False]


@pytest.mark.parametrize(
    ("user", "ids", "at"),
    [("", ["a"], None), (None, ["a"], None), ("u", ["a", 3], None), ("u", [b"a"], None), ("u", "abc", None),
     ("u", ["a"], 1.5)],
)
def test_invalid_read_input(
    redis_client: redis.Redis, settings: Settings, user: Any, ids: Any, at: Any
) -> None:
    reader = ExposureReader(redis_client, settings)
    with pytest.raises(InputError):
        reader.filter_unseen(user, ids, at=at)
    with pytest.raises(InputError):
        reader.seen(user, ids, at=at)


@pytest.mark.parametrize(
    ("batch", "wm"),
    [({"": [("a", T0)]}, T0), ({"u": [(1, T0)]}, T0), ({"u": [("a", "now")]}, T0), ({"u": [("a", T0)]}, 1.0),
     ({"u": [("a",)]}, T0), ({"u": ["ab"]}, T0)],
)
def test_invalid_write_input(redis_client: redis.Redis, settings: Settings, batch: Any, wm: Any) -> None:
    with pytest.raises(InputError):
        ExposureWriter(redis_client, settings).add(batch, wm)


def test_read_metrics_and_iterables(redis_client: redis.Redis, settings: Settings) -> None:
    ExposureWriter(redis_client, settings).add({"u": [("a", T0), ("b", T0)]}, T0)
    reader = ExposureReader(redis_client, settings)
    checks, filtered = BLOOM_CHECKS._value.get(), BLOOM_FILTERED._value.get()
    assert reader.filter_unseen("u", iter(["a", "c", "b", "d"]), at=T0) == ["c", "d"]
    assert reader.filter_unseen("u", ("d", "a"), at=T0) == ["d"]
    assert BLOOM_CHECKS._value.get() - checks == 6
    assert BLOOM_FILTERED._value.get() - filtered == 3


def test_empty_inputs(redis_client: redis.Redis, settings: Settings) -> None:
    assert ExposureWriter(redis_client, settings).add({}, T0) == 0
    assert ExposureWriter(redis_client, settings).add({"u": []}, T0) == 0
    reader = ExposureReader(redis_client, settings)
    assert reader.filter_unseen("u", []) == []
    assert reader.filter_unseen("nobody", ["a", "b"]) == ["a", "b"]
    assert reader.seen("nobody", ["a"], at=T0) == [False]


def test_from_url_and_default_now(redis_service: Any) -> None:
    reader = ExposureReader.from_url(redis_service.redis_url, redis_service.settings)
    client = redis.Redis.from_url(redis_service.redis_url)
    client.flushdb()
    now = int(np.datetime64("now", "ms").astype(np.int64))
    ExposureWriter(client, redis_service.settings).add({"u": [("seen-now", now)]}, now)
    assert reader.filter_unseen("u", ["seen-now", "fresh"]) == ["fresh"]
