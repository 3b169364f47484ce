"""The cost benchmark's core (:func:`bench.cost_bench.run_case`) at a tiny size on the real Redis: its key
families account for every key and (almost) every byte, and every user written is in Redis."""

from __future__ import annotations

import pytest
import redis

from bench.cost_bench import Case, run_case
from bench.cost_events import Activity
from infra.settings import Settings

pytestmark = pytest.mark.integration

PER_PARTITION = 150


@pytest.fixture
def rows(redis_service: object, redis_client: redis.Redis) -> list[dict[str, object]]:
    settings: Settings = redis_service.settings  # type: ignore[attr-defined]
    # spread 0: every user has Poisson(20) impressions a day, so every user written has events; every
    # user's keys are measured one by one (sample > users)
    case = Case(PER_PARTITION, (1, 2), days=2, items=300, activity=Activity(spread=0.0), sample=10**9)
    return run_case(redis_client, settings, case)


@pytest.mark.usefixtures("redis_service")
def test_families_cover_redis(rows: list[dict[str, object]], redis_client: redis.Redis) -> None:
    last = rows[-1]
    families: dict[str, dict[str, float]] = last["families"]  # type: ignore[assignment]
    assert redis_client.dbsize() == sum(f["keys"] for f in families.values())  # no key outside a family
    delta = float(last["used_memory_delta"])  # type: ignore[arg-type]
    assert 0.8 * delta <= float(last["family_bytes_sum"]) <= 1.05 * delta  # type: ignore[arg-type]


@pytest.mark.usefixtures("redis_service")
def test_every_user_written_is_in_redis(rows: list[dict[str, object]], redis_client: redis.Redis) -> None:
    assert [r["users"] for r in rows] == [PER_PARTITION, 2 * PER_PARTITION]
    tiles = {k.decode().split(":")[2] for k in redis_client.scan_iter(match="rs2:{u.*}:*:st", count=1000)}
    assert len(tiles) == 2 * PER_PARTITION
    assert rows[-1]["sampled_users_found"] == 2 * PER_PARTITION
    assert all(int(r["events"]) > 20 * PER_PARTITION for r in rows)  # type: ignore[call-overload]
