"""The Faust application: thin agents that feed batches of raw records to the stages in :mod:`stream.ingest`.

Every agent runs with concurrency 1 (faust-streaming #606 commits past in-flight messages otherwise) and
batches with ``take_events(n, within=…)`` (``take`` without ``within`` can stall). Processing is
``at_least_once``; exactness comes from the replay guard in Redis (docs/architecture.md). Each batch is
committed in one order: its Redis writes (user, item and author shards), then its dead letters (awaited
until the broker acknowledged them), then its event-time clocks, and only then — after the iteration
that took the batch has finished — Faust commits the source offsets. A crash anywhere replays the batch
into a guard that makes the replay a no-op, and a dead-lettered message is never lost. Before Faust
starts, the group is moved back to the offsets Redis says were applied where Kafka committed beyond them
(:mod:`stream.resume`); a Redis that goes back in time under a running worker stops it with exit code 75.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import faust
import redis
from faust.types import TP, EventT

from infra import metrics
from infra.errors import RedisRollbackError, SourceGapError
from infra.gc_tuning import tune_gc
from infra.kafka_log import faust_credentials
from infra.redis_client import check_layout, connect
from infra.settings import Settings
from infra.topics import require_kafka
from stream.ingest import IngestStage, ItemMetaStage, Record, StageOutput
from stream.lag import partition_lag
from stream.resume import reconcile

log = logging.getLogger(__name__)
GIL_SWITCH_S = 0.0005
# EX_TEMPFAIL: the worker stopped on purpose and must be started again: Redis lost acknowledged writes under
# it, a batch skipped unapplied records, or a batch failed (Faust would restart the agent and lose the
# records it had buffered); the restart resumes from the offsets Redis says were applied (stream.resume)
ROLLBACK_EXIT = 75
T = TypeVar("T")
RAW: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def _records(events: Sequence[EventT[bytes]]) -> list[Record]:
    out = []
    for event in events:
        msg = event.message
        out.append(Record(msg.topic, msg.partition, msg.offset, msg.key, msg.value, int(msg.timestamp * 1000)))
    return out


def _observe_lag(app: faust.App, group: str, events: Sequence[EventT[bytes]]) -> None:
    """The consumer-lag gauges of the partitions in a batch, from the consumer's highwater marks."""
    newest: dict[tuple[str, int], Any] = {}
    for event in events:
        newest[(event.message.topic, event.message.partition)] = event.message
    now = time.time()
    for (topic, partition), msg in newest.items():
        try:
            highwater = app.consumer.highwater(TP(topic, partition))
        except (KeyError, AttributeError, AssertionError):  # not fetched yet, or revoked by a rebalance
            highwater = None
        messages, seconds = partition_lag(highwater, msg.offset, msg.timestamp, now)
        labels = {"group": group, "topic": topic, "partition": str(partition)}
        metrics.CONSUMER_LAG.labels(**labels).set(messages)
        metrics.CONSUMER_LAG_SECONDS.labels(**labels).set(seconds)


def _stop(line: str) -> NoReturn:
    """Log one line and exit with :data:`ROLLBACK_EXIT` at once: no commit, no flush (Faust would restart a
    crashed agent and drop the records it had buffered; a restart resumes from Redis's offsets instead)."""
    log.error("%s", line)
    logging.shutdown()
    os._exit(ROLLBACK_EXIT)


async def _retry_redis(agent_name: str, work: Callable[[], T]) -> T:
    """Run ``work`` off the event loop; wait out Redis outages (the batch stays unacknowledged meanwhile)."""
    delay = 0.1
    while True:
        try:
            return await asyncio.to_thread(work)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("%s: Redis unavailable (%s); retrying in %.1f s", agent_name, exc, delay)
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
        broker_credentials=faust_credentials(kafka),
        store=worker.store,
        datadir=str(settings.home / "worker"),
        topic_partitions=kafka.partitions,
        topic_replication_factor=1,
        topic_allow_declare=False,
        table_standby_replicas=0,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        broker_session_timeout=worker.session_timeout_s,
        stream_wait_empty=False,
        web_enabled=False,
        web_port=worker.web_port,
        producer_compression_type="lz4",
    )
    client = connect(settings.redis.effective_url, cluster=settings.redis.cluster, check=False)
    dlq = app.topic(kafka.dlq_topic, **RAW)
    n, within = worker.batch_size, worker.batch_within_s

    async def emit(out: StageOutput) -> None:
        """Send the batch's dead letters and wait until the broker acknowledged each."""
        pending = [await dlq.send(key=d.record.key, value=d.payload, headers=d.headers()) for d in out.dead_letters]
        if pending:
            await asyncio.gather(*pending)

    async def apply(agent_name: str, stage: Any, records: list[Record]) -> None:
        """One batch, in the commit order: Redis writes -> dead letters and samples acknowledged -> join
        checkpoint -> clocks persisted; Faust commits the offsets after it."""
        try:
            out: StageOutput = await _retry_redis(agent_name, functools.partial(stage.process, records))
            await emit(out)
            await _retry_redis(agent_name, out.commit)
        except (RedisRollbackError, SourceGapError) as exc:
            _stop(f"{agent_name}: {exc}")
        except Exception as exc:  # any failure: stop rather than lose what the agent had buffered
            log.exception("%s: the batch failed", agent_name)
            _stop(f"{agent_name}: stopping after {type(exc).__name__}: {exc}; a restart resumes from what Redis "
                  "applied")

    async def run(agent_name: str, stage: Any, stream: faust.StreamT[bytes], lock: asyncio.Lock) -> None:
        async for events in stream.take_events(n, within=within):  # type: ignore[attr-defined]
            records = _records(events)
            started = time.perf_counter()
            async with lock:
                batch = asyncio.ensure_future(apply(agent_name, stage, records))
                try:
                    await asyncio.shield(batch)
                except asyncio.CancelledError:
                    # a stopping worker: take_events acknowledges the batch's events on its way out (in a
                    # `finally`) and Faust commits them, so the batch must be applied first, or it is lost
                    await batch
                    raise
            metrics.BATCH_SIZE.labels(agent=agent_name).observe(len(records))
            metrics.PROCESSING_SECONDS.labels(agent=agent_name).observe(time.perf_counter() - started)
            _observe_lag(app, worker.app_id, events)

    ingest_stage = IngestStage(client, settings)
    meta_stage = ItemMetaStage(client, settings)
    ingest_lock = asyncio.Lock()  # the idle flush runs between ingest batches, never inside one

    @app.agent(app.topic(kafka.events_topic, **RAW), concurrency=1, name="ingest")
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        await run("ingest", ingest_stage, stream, ingest_lock)

    @app.agent(app.topic(kafka.items_topic, **RAW), concurrency=1, name="item-meta")
    async def item_meta(stream: faust.StreamT[bytes]) -> None:
        await run("item-meta", meta_stage, stream, asyncio.Lock())

    idle = settings.join.idle_flush_s
    if settings.join.enabled and idle > 0:

        @app.timer(interval=max(0.5, idle / 4))  # type: ignore[untyped-decorator]
        async def join_idle_flush() -> None:
            async with ingest_lock:
                commit = await _retry_redis("ingest", ingest_stage.flush_idle)
                if commit is not None:
                    await _retry_redis("ingest", commit)

    return app


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT (``recstream worker``)."""
    # the Redis I/O thread needs the GIL for every reply it reads while the stage thread prepares the next
    # chunk: hand the GIL over every 0.5 ms instead of every 5 ms, or Redis idles between pipelines
    sys.setswitchinterval(GIL_SWITCH_S)
    client = connect(settings.redis.effective_url, cluster=settings.redis.cluster)
    check_layout(client, settings.redis.shards, claim=True)
    require_kafka(settings)
    reconcile(settings, client)  # resume from what Redis applied, not from Kafka's commits
    metrics.serve(settings.worker.metrics_port, "RECSTREAM_WORKER_METRICS_PORT")
    app = create_app(settings)
    tune_gc(settings.worker.gc_young)  # after start-up: what it built is frozen out of every later pass
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
