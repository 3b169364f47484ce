"""The Faust application: thin agents that feed batches of raw records to the stages in :mod:`stream.ingest`.

Every agent runs with concurrency 1 (faust-streaming #606 commits past in-flight messages otherwise) and
batches with ``take_events(n, within=…)`` (``take`` without ``within`` can stall). Processing is
``at_least_once``; exactness comes from the replay guard in Redis (docs/architecture.md). Faust commits a
batch's source offsets only after the batch iteration completed and its producer was flushed, so a
forwarded or dead-lettered message is never lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import faust
import redis
from faust.types import EventT

from infra import metrics
from infra.errors import InfraError
from infra.redis_server import redact
from infra.settings import Settings
from stream.ingest import EntityStage, IngestStage, ItemMetaStage, Record, StageOutput

log = logging.getLogger(__name__)
RAW: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def _records(events: Sequence[EventT[bytes]]) -> list[Record]:
    out = []
    for event in events:
        msg = event.message
        out.append(Record(msg.topic, msg.partition, msg.offset, msg.key, msg.value))
    return out


async def _process_with_retry(agent_name: str, stage: Any, records: list[Record]) -> StageOutput:
    """Run a stage off the event loop; wait out Redis outages (the batch stays unacknowledged meanwhile)."""
    delay = 0.1
    while True:
        try:
            out: StageOutput = await asyncio.to_thread(stage.process, records)
            return out
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("%s: Redis unavailable (%s); retrying the batch in %.1f s", agent_name, exc, delay)
            metrics.REDIS_RETRIES.labels(agent=agent_name).inc()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app for these settings (topics must exist: ``recstream infra up`` creates them)."""
    kafka = settings.kafka
    worker = settings.worker
    app = faust.App(
        worker.app_id,
        broker=f"kafka://{kafka.bootstrap}",
        store=worker.store,
        datadir=str(settings.home / "worker"),
        topic_partitions=kafka.partitions,
        topic_replication_factor=1,
        topic_allow_declare=False,
        table_standby_replicas=0,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        web_enabled=False,
        web_port=worker.web_port,
        producer_compression_type="lz4",
    )
    client = redis.Redis.from_url(settings.redis.effective_url)
    dlq = app.topic(kafka.dlq_topic, **RAW)
    by_item = app.topic(kafka.by_item_topic, **RAW)
    by_author = app.topic(kafka.by_author_topic, **RAW)
    n, within = worker.batch_size, worker.batch_within_s

    async def emit(out: StageOutput) -> None:
        for dead in out.dead_letters:
            await dlq.send(key=dead.record.key, value=dead.record.value, headers=dead.headers())
        for partition, value in out.messages("item"):
            await by_item.send(value=value, partition=partition)
        for partition, value in out.messages("author"):
            await by_author.send(value=value, partition=partition)

    async def run(agent_name: str, stage: Any, stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(n, within=within):  # type: ignore[attr-defined]
            records = _records(events)
            started = time.perf_counter()
            out = await _process_with_retry(agent_name, stage, records)
            await emit(out)
            metrics.BATCH_SIZE.labels(agent=agent_name).observe(len(records))
            metrics.PROCESSING_SECONDS.labels(agent=agent_name).observe(time.perf_counter() - started)

    ingest_stage = IngestStage(client, settings)
    item_stage = EntityStage(client, settings, "item")
    author_stage = EntityStage(client, settings, "author")
    meta_stage = ItemMetaStage(client)

    @app.agent(app.topic(kafka.events_topic, **RAW), concurrency=1, name="ingest")
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        await run("ingest", ingest_stage, stream)

    @app.agent(by_item, concurrency=1, name="item-stats")
    async def item_stats(stream: faust.StreamT[bytes]) -> None:
        await run("item-stats", item_stage, stream)

    @app.agent(by_author, concurrency=1, name="author-stats")
    async def author_stats(stream: faust.StreamT[bytes]) -> None:
        await run("author-stats", author_stage, stream)

    @app.agent(app.topic(kafka.items_topic, **RAW), concurrency=1, name="item-meta")
    async def item_meta(stream: faust.StreamT[bytes]) -> None:
        await run("item-meta", meta_stage, stream)

    return app


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT (``recstream worker``)."""
    url = settings.redis.effective_url
    try:
        redis.Redis.from_url(url, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        msg = (f"cannot reach Redis at {redact(url)} ({exc}); "
               "start it with `recstream infra up` or set RECSTREAM_REDIS_URL")
        raise InfraError(msg) from None
    port = settings.worker.metrics_port
    try:
        metrics.serve(port)
    except OSError as exc:
        msg = (f"cannot serve /metrics on 127.0.0.1:{port} ({exc.strerror}); another worker may have it: "
               "set RECSTREAM_WORKER_METRICS_PORT to a free port (0 = no endpoint)")
        raise InfraError(msg) from None
    app = create_app(settings)
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
