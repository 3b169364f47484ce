"""The infrastructure layer against the real Kafka broker and Redis server.

Each lifecycle test uses its own temporary home and free ports (never the session pair), so it can
start, stop and break services freely.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from infra import kafka_broker, procs, redis_server
from infra import services as svc
from infra.errors import InfraError
from infra.settings import Settings
from infra.topics import admin_client, ensure_topics, topic_specs

pytestmark = pytest.mark.integration


@pytest.fixture
def private(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[Settings]:
    """Settings for a private pair; whatever the test leaves running is stopped afterwards."""
    settings = make_settings(tmp_path / "home")
    yield settings
    svc.down(settings)


def test_session_fixtures(services: Any, redis_client: redis.Redis) -> None:
    assert redis_client.ping()
    assert redis_client.dbsize() == 0
    topics = admin_client(services.settings).list_topics(timeout=10).topics
    for spec in topic_specs(services.settings):
        assert len(topics[spec.name].partitions) == services.settings.kafka.partitions
    assert services.bootstrap == f"127.0.0.1:{services.settings.kafka.port}"


def test_up_twice_status_down_twice(private: Settings) -> None:
    first = svc.up(private)
    assert first.all_up, first
    second = svc.up(private)  # idempotent: reuses the running pair
    assert second.all_up
    assert (second.kafka.pid, second.redis.pid) == (first.kafka.pid, first.redis.pid)
    assert ensure_topics(private) == []  # topics already exist

    st = svc.status(private)
    assert st.kafka.running and st.redis.running
    assert st.kafka.address == private.kafka.bootstrap
    assert st.kafka.log is not None and st.kafka.log.exists()

    pids = [p for p in (first.kafka.pid, first.redis.pid) if p is not None]
    assert len(pids) == 2
    assert sorted(svc.down(private)) == ["kafka", "redis"]
    assert svc.down(private) == []
    for pid in pids:
        assert not procs.alive(pid), f"pid {pid} still alive after down"
    after = svc.status(private)
    assert not after.kafka.running and not after.redis.running
    assert not kafka_broker.BrokerPaths.of(private).pid_file.exists()
    assert not redis_server.RedisPaths.of(private).pid_file.exists()


def test_redis_data_survives_restart(private: Settings) -> None:
    redis_server.start(private)
    client = redis.Redis.from_url(private.redis.effective_url)
    client.set("survives", "yes")
    client.close()
    redis_server.stop(private)
    redis_server.start(private)
    client = redis.Redis.from_url(private.redis.effective_url)
    assert client.get("survives") == b"yes"
    client.close()


def test_external_redis_starts_nothing(private: Settings, redis_service: Any) -> None:
    external = private.model_copy(update={"redis": private.redis.model_copy(
        update={"url": redis_service.redis_url})})
    assert redis_server.start(external) is None
    assert not redis_server.RedisPaths.of(external).root.exists()
    st = svc.redis_status(external)
    assert st.running and not st.managed and st.pid is None
    assert redis_server.stop(external) is False  # never touches an external server
    assert redis_server.ping(redis_service.redis_url)


def test_external_redis_unreachable(private: Settings, free_port: Callable[[], int]) -> None:
    port = free_port()
    external = private.model_copy(update={"redis": private.redis.model_copy(
        update={"url": f"redis://127.0.0.1:{port}/0"})})
    with pytest.raises(InfraError, match="does not answer PING"):
        redis_server.start(external)


@pytest.mark.parametrize("service", ["redis", "kafka"])
def test_port_in_use_is_a_clear_error(private: Settings, service: str) -> None:
    port = private.redis.port if service == "redis" else private.kafka.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(InfraError, match=rf"127\.0\.0\.1:{port} .*already in use"):
            if service == "redis":
                redis_server.start(private)
            else:
                kafka_broker.start(private)
    assert svc.status(private).kafka.pid is None
    assert svc.status(private).redis.pid is None


def test_stale_pid_file_is_ignored(private: Settings) -> None:
    paths = redis_server.RedisPaths.of(private)
    procs.write_pid(paths.pid_file, 1)  # pid 1 exists but is not our redis: never signalled
    assert redis_server.running_pid(private) is None
    assert redis_server.stop(private) is False
    assert not paths.pid_file.exists()
    assert procs.alive(1)


def test_changed_settings_while_running_is_a_clear_error(private: Settings) -> None:
    redis_server.start(private)
    changed = private.model_copy(update={"redis": private.redis.model_copy(update={"maxmemory": "64mb"})})
    with pytest.raises(InfraError, match="infra down"):
        redis_server.start(changed)
    assert redis_server.running_pid(private) is not None
