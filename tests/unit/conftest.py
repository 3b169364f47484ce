"""Unit-test fixtures: librdkafka's built-in mock cluster (no real broker; integration tests use one)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import Producer


@pytest.fixture(scope="module")
def mock_bootstrap() -> Iterator[str]:
    """A one-broker mock cluster, kept alive by its owning client for the module."""
    owner = Producer({"test.mock.num.brokers": 1, "log_level": 3})
    broker = next(iter(owner.list_topics(timeout=10).brokers.values()))
    yield f"{broker.host}:{broker.port}"
    owner.flush(1)
