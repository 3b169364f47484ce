"""Session fixtures: the test suite's OWN Kafka broker + Redis server, on free ports, in a temp home.

They never collide with a running demo (default ports, default home). Fixtures:

* ``redis_service`` (session): only Redis (cheap).
* ``kafka_service`` (session): the Kafka broker with every recstream topic created.
* ``services`` (session): both.
* ``redis_client`` (function): ``redis.Redis`` on the session Redis, ``flushdb()`` before the test.
* ``make_settings`` (function): a factory ``make_settings(home, **overrides) -> Settings`` for a
  private pair on fresh free ports (for tests that start/stop/break services themselves).
* ``free_port`` (function): a factory returning a TCP port free on 127.0.0.1.

Each service fixture yields the same :class:`ServicePair` (``.settings``, ``.redis_url``,
``.bootstrap``). Tests using them are marked ``integration`` automatically (and should say so with
``@pytest.mark.integration``); deselect them with ``-m "not integration"``.
"""

from __future__ import annotations

import atexit
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from infra import kafka_broker, redis_server
from infra.settings import Settings
from infra.topics import ensure_topics

#: Where the suite points RECSTREAM_CONFIG: a path that never exists, so no recstream.toml is read.
NO_CONFIG_FILE = "/nonexistent/recstream-tests/recstream.toml"


def pytest_configure(config: pytest.Config) -> None:
    """Make the suite hermetic: no ``RECSTREAM_*`` variable and no ``./recstream.toml`` of the machine
    running it may change a setting (tests/unit/test_hermetic.py proves it); child processes (the
    worker) inherit the cleaned environment plus what each test passes explicitly."""
    for name in [n for n in os.environ if n.startswith("RECSTREAM_")]:
        del os.environ[name]
    os.environ["RECSTREAM_CONFIG"] = NO_CONFIG_FILE


SERVICE_FIXTURES = frozenset({"redis_service", "kafka_service", "services", "redis_client"})


@dataclass(frozen=True)
class ServicePair:
    """A Kafka broker + Redis server owned by the test session."""

    settings: Settings

    @property
    def redis_url(self) -> str:
        return self.settings.redis.effective_url

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka.bootstrap


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that are free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def make_test_settings(home: Path, **overrides: object) -> Settings:
    """Settings for a private service pair in ``home`` on fresh free ports (env/toml cannot leak in)."""
    kport, cport, rport, web, metrics = free_ports(5)
    fields: dict[str, object] = {
        "home": home,
        "kafka": {"host": "127.0.0.1", "port": kport, "controller_port": cport, "bootstrap": ""},
        "redis": {"url": "", "host": "127.0.0.1", "port": rport, "db": 0},
        "worker": {"web_port": web, "metrics_port": metrics},
    }
    fields.update(overrides)
    return Settings(**fields)  # type: ignore[arg-type]


def private_topics(settings: Settings, prefix: str, **sections: dict[str, object]) -> Settings:
    """``settings`` with topics and consumer group of their own (``<prefix>-<kind>-<random>``) on the
    session broker, plus any section overrides (``worker={"metrics_port": 0}``)."""
    import uuid

    tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
    update: dict[str, object] = {
        "kafka": settings.kafka.model_copy(update={"events_topic": f"{tag}-ev", "items_topic": f"{tag}-it",
                                                   "dlq_topic": f"{tag}-dlq", "samples_topic": f"{tag}-sm"}),
        "worker": settings.worker.model_copy(update={"app_id": tag, **sections.pop("worker", {})}),
    }
    for name, fields in sections.items():
        update[name] = getattr(settings, name).model_copy(update=fields)
    return settings.model_copy(update=update)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def _service_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = make_test_settings(tmp_path_factory.mktemp("recstream-home"))
    atexit.register(_stop_all, settings)  # safety net if the session dies before teardown
    yield settings
    _stop_all(settings)
    leftovers = {
        name: pid for name, pid in (("kafka", kafka_broker.running_pid(settings)),
                                    ("redis", redis_server.running_pid(settings))) if pid is not None
    }
    assert not leftovers, f"services still running after the test session: {leftovers}"


def _stop_all(settings: Settings) -> None:
    kafka_broker.stop(settings)
    redis_server.stop(settings)


@pytest.fixture(scope="session")
def redis_service(_service_settings: Settings) -> Iterator[ServicePair]:
    """The session's Redis server (started on first use, stopped at session end)."""
    redis_server.start(_service_settings)
    yield ServicePair(_service_settings)
    redis_server.stop(_service_settings)


@pytest.fixture(scope="session")
def kafka_service(_service_settings: Settings) -> Iterator[ServicePair]:
    """The session's Kafka broker with all recstream topics (started on first use)."""
    kafka_broker.start(_service_settings)
    ensure_topics(_service_settings)
    yield ServicePair(_service_settings)
    kafka_broker.stop(_service_settings)


@pytest.fixture(scope="session")
def services(redis_service: ServicePair, kafka_service: ServicePair) -> ServicePair:
    """Kafka and Redis together (same settings object)."""
    return kafka_service


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """Factory: ``make_settings(home, **overrides)`` -> Settings for a private pair on free ports."""
    return make_test_settings


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Factory: ``free_port()`` -> a TCP port free on 127.0.0.1 right now."""
    return lambda: free_ports(1)[0]


@pytest.fixture
def redis_client(redis_service: ServicePair) -> Iterator[redis.Redis]:
    """A client on the session Redis, with the database flushed before the test."""
    client = redis.Redis.from_url(redis_service.redis_url)
    client.flushdb()
    yield client
    client.close()
