"""Fixtures of the chaos, fault and rebuild tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import redis_server
from infra.settings import Settings
from infra.topics import ensure_topics
from tests.conftest import ServicePair, free_ports
from tests.pipeline_check import private_pipeline


@pytest.fixture
def own_redis(services: ServicePair, tmp_path: Path) -> Iterator[Settings]:
    """Private topics on the session broker and a private redis-server (this test kills and restores it)."""
    base = private_pipeline(services.settings)
    s = base.model_copy(update={"home": tmp_path, "redis": base.redis.model_copy(
        update={"port": free_ports(1)[0], "url": ""})})
    redis_server.start(s)
    ensure_topics(s)
    yield s
    redis_server.stop(s)
