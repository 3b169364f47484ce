"""Shared benchmark plumbing: a private Kafka + Redis pair, percentiles, JSON + markdown output."""

from __future__ import annotations

import json
import platform
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Consumer, TopicPartition

from infra import redis_server, services
from infra.settings import Settings

BAR: dict[str, Any] = {"leave": False, "disable": None, "mininterval": 0.5}
"""tqdm options of the benchmarks: transient bars, none when the output is not a terminal."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def private_services(partitions: int = 8) -> Iterator[Settings]:
    """A Kafka broker and a Redis server of the benchmark's own, on free ports, torn down afterwards
    (also on SIGTERM, which is turned into a normal exit so the teardown runs)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="recstream-bench-") as home:
        kport, rport = free_port(), free_port()
        settings = Settings(
            home=Path(home),
            kafka={"port": kport, "controller_port": free_port(), "partitions": partitions},
            redis={"port": rport},
            worker={"metrics_port": 0},
        )
        with services.running(settings):
            yield settings


@contextmanager
def private_redis(url: str | None = None, **overrides: Any) -> Iterator[tuple[redis.Redis, Settings]]:
    """The Redis at ``url``, or a redis-server of the benchmark's own on a free port in a temp home
    (started and stopped through :mod:`infra.redis_server`); yields ``(client, settings)``."""
    if url:
        yield redis.Redis.from_url(url), Settings(redis={"url": url}, **overrides)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="recstream-bench-") as home:
        settings = Settings(home=Path(home), redis={"port": free_port()}, **overrides)
        redis_server.start(settings)
        try:
            yield redis.Redis.from_url(settings.redis.effective_url), settings
        finally:
            redis_server.stop(settings)


def with_sections(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """A copy of ``settings`` with some fields of some sections replaced (validated again)."""
    data = settings.model_dump()
    for name, values in sections.items():
        data[name] = {**data[name], **values}
    return Settings(**data)


def records_in(settings: Settings, topic: str) -> int:
    """Records in a topic (sum of the high watermarks)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": "bench-watermarks",
                         "broker.address.family": "v4"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        consumer.close()


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean in microseconds."""
    ordered = sorted(samples_s)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    return {"p50_us": pick(0.50), "p99_us": pick(0.99), "mean_us": statistics.fmean(ordered) * 1e6}


def machine() -> dict[str, Any]:
    import os

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def write_results(out_dir: Path, name: str, results: dict[str, Any], table: list[list[str]]) -> Path:
    """Write ``<name>.json`` and ``<name>.md`` (a markdown table: first row is the header)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), **results}
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    header, *rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    md = f"# {name}\n\n{results['when']}, {results['machine']['cpus']} CPUs, Python {results['machine']['python']}\n\n"
    (out_dir / f"{name}.md").write_text(md + "\n".join(lines) + "\n")
    return out_dir / f"{name}.md"
