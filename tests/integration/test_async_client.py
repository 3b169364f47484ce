"""The async client against the real Redis: the same answers as the sync client (they share every
decode), and an unreachable Redis is one project error."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import redis

from infra.errors import InfraError
from serving.async_client import AsyncFeatureClient
from serving.client import FeatureClient
from tests.conftest import ServicePair
from tests.serving_data import ITEMS, populate

pytestmark = pytest.mark.integration


def test_async_answers_equal_sync_answers(redis_service: ServicePair, redis_client: redis.Redis,
                                          tmp_path: Path) -> None:
    settings = populate(redis_service.settings, redis_client, tmp_path)
    sync = FeatureClient(settings=settings)
    candidates = [f"i{k}" for k in range(ITEMS)]

    async def run() -> None:
        client = await AsyncFeatureClient.connect(settings=settings)
        try:
            users = [f"u{k}" for k in range(6)]
            many = await asyncio.gather(*(client.request_features(u, candidates, at=1) for u in users))
            for user, f in zip(users, many, strict=True):
                g = sync.request_features(user, candidates, at=1)
                np.testing.assert_array_equal(f.unseen, g.unseen)
                assert f.last_n == g.last_n and f.model_version == g.model_version
                np.testing.assert_array_equal(f.candidate_stats.values, g.candidate_stats.values)
                np.testing.assert_allclose(f.scores, g.scores, rtol=1e-6)
            assert await client.filter_unseen("u1", candidates) == sync.filter_unseen("u1", candidates)
            assert await client.last_n_multi("u2", {"click": 5}) == sync.last_n_multi("u2", {"click": 5})
            np.testing.assert_allclose(await client.user_vector("u3"), sync.user_vector("u3").vector, atol=1e-6)
            assert await client.model_version() == sync.model_version()
            assert (await client.recommend("u4", k=10)).items == sync.recommend("u4", k=10).items
            some = candidates[:80]  # over given candidates: the best-scored unseen ones, from both clients
            unseen = set(sync.filter_unseen("u1", some))
            score = dict(zip(some, sync.score("u1", some), strict=True))
            ranked = sorted((c for c in some if c in unseen), key=lambda c: -score[c])
            got = await client.recommend("u1", k=5, candidates=some)
            assert [i for i, _ in got.items] == [i for i, _ in sync.recommend("u1", k=5, candidates=some).items]
            assert [i for i, _ in got.items] == ranked[:5] and got.exact and got.fetched == len(some)
        finally:
            await client.close()

    asyncio.run(run())
    sync.close()


def test_unreachable_redis_is_one_error_for_both_clients(redis_service: ServicePair, free_port: object) -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"  # type: ignore[operator]

    async def run() -> None:
        await AsyncFeatureClient.connect(url, settings=redis_service.settings)

    with pytest.raises(InfraError, match=r"cannot reach Redis at redis://:\*\*\*@127\.0\.0\.1") as err:
        asyncio.run(run())
    assert "\n" not in str(err.value) and "secret" not in str(err.value)
    with pytest.raises(InfraError, match=r"cannot reach Redis at redis://:\*\*\*@127\.0\.0\.1"):
        FeatureClient(url, settings=redis_service.settings)


def test_async_round_survives_a_script_flush(redis_service: ServicePair, redis_client: redis.Redis,
                                             tmp_path: Path) -> None:
    """NOSCRIPT mid-round: the script is loaded and the round runs again; the dropped connection leaves
    no unread reply behind, so the next request on the pool answers its own commands."""
    settings = populate(redis_service.settings, redis_client, tmp_path)
    sync = FeatureClient(settings=settings)
    candidates = [f"i{k}" for k in range(ITEMS)]

    async def run() -> None:
        client = await AsyncFeatureClient.connect(settings=settings, max_connections=1)
        try:
            for user in ("u1", "u2", "u3"):
                redis_client.script_flush()
                f = await client.request_features(user, candidates, at=1)
                g = sync.request_features(user, candidates, at=1)
                np.testing.assert_array_equal(f.unseen, g.unseen)
                np.testing.assert_array_equal(f.candidate_stats.values, g.candidate_stats.values)
                assert f.last_n == g.last_n
        finally:
            await client.close()

    asyncio.run(run())
    sync.close()
