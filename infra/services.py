"""Bring the local Kafka broker and Redis server up and down together.

``up`` is idempotent: services already running for this data home (pid file + matching cmdline +
readiness) are reused. ``down`` stops only what recstream started (its pid files) and removes them.

Typical use::

    with running(load_settings()) as status:
        print(status.kafka.address, status.redis.address)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from infra import kafka_broker, procs, redis_server
from infra.settings import Settings
from infra.topics import ensure_topics

SERVICES: tuple[str, ...] = ("kafka", "redis")


@dataclass(frozen=True)
class ServiceStatus:
    """One service as ``infra status`` reports it."""

    name: str
    running: bool
    pid: int | None
    address: str
    log: Path | None
    managed: bool = True

    def describe(self) -> str:
        """One status line.

        >>> log = Path("/h/redis/redis.log")
        >>> ServiceStatus("redis", True, 42, "redis://127.0.0.1:6379/0", log).describe()
        'redis  running  pid 42  redis://127.0.0.1:6379/0  log /h/redis/redis.log'
        >>> ServiceStatus("redis", True, None, "redis://db:6379/0", None, managed=False).describe()
        'redis  running  external  redis://db:6379/0'
        """
        state = "running" if self.running else "stopped"
        who = f"pid {self.pid}" if self.pid is not None else ("external" if not self.managed else "-")
        parts = [f"{self.name:<5}", state, who, self.address]
        if self.log is not None:
            parts.append(f"log {self.log}")
        return "  ".join(parts)


@dataclass(frozen=True)
class Status:
    """Kafka and Redis together."""

    kafka: ServiceStatus
    redis: ServiceStatus

    @property
    def all_up(self) -> bool:
        """True when both services are running."""
        return self.kafka.running and self.redis.running

    def __iter__(self) -> Iterator[ServiceStatus]:
        return iter((self.kafka, self.redis))


def kafka_status(settings: Settings) -> ServiceStatus:
    """The broker of this home: running when its pid is ours and its port accepts connections."""
    paths = kafka_broker.BrokerPaths.of(settings)
    pid = kafka_broker.running_pid(settings)
    up = pid is not None and procs.port_open(settings.kafka.host, settings.kafka.port)
    return ServiceStatus("kafka", up, pid, settings.kafka.bootstrap, paths.out)


def redis_status(settings: Settings) -> ServiceStatus:
    """The Redis of this home (or the external one): running when it answers PING."""
    redis = settings.redis
    address = redis_server.redact(redis.effective_url)
    if not redis.managed:
        return ServiceStatus("redis", redis_server.ping(redis.effective_url), None, address, None, managed=False)
    pid = redis_server.running_pid(settings)
    up = pid is not None and redis_server.ping(redis.effective_url)
    return ServiceStatus("redis", up, pid, address, redis_server.RedisPaths.of(settings).log)


def status(settings: Settings) -> Status:
    """The current state of both services (no side effects)."""
    return Status(kafka_status(settings), redis_status(settings))


def up(settings: Settings) -> Status:
    """Start Redis and Kafka (unless running), create the topics, return the status.

    Raises InfraError (a port is taken, a binary is missing, a service fails to start; the message
    names the log file) or KafkaError (topic creation).
    """
    redis_server.start(settings)
    kafka_broker.start(settings)
    ensure_topics(settings)
    return status(settings)


def down(settings: Settings, services: tuple[str, ...] = SERVICES) -> list[str]:
    """Stop the named services this home started (pid files); return the names that were running.

    Idempotent: stopping stopped services does nothing. An external Redis is never touched.
    """
    stopped: list[str] = []
    # Kafka first: its clients (workers) may still write to Redis while it drains.
    if "kafka" in services and kafka_broker.stop(settings):
        stopped.append("kafka")
    if "redis" in services and redis_server.stop(settings):
        stopped.append("redis")
    return stopped


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[Status]:
    """``up`` on entry; on exit stop only the services this block started itself.

    Services that were already running before (e.g. from ``recstream infra up``) are left running.
    """
    before = status(settings)
    already = tuple(s.name for s in before if s.running)
    try:
        yield up(settings)
    finally:
        down(settings, tuple(name for name in SERVICES if name not in already))
