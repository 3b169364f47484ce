"""The label join in the ingest stage: a batch's first deliveries through :mod:`filters.labels`, samples
to the samples topic, the join state checkpointed in Redis (docs/samples.md).

The worker that owns a source partition keeps its join state in memory and checkpoints what a batch
changed: one ``join_save.lua`` call per user shard, a hash of per-user msgpack states plus the source
position they hold. The commit order extends the ingest stage's: feature writes → samples and dead
letters acknowledged by the broker → join checkpoint → watermark → offsets. Samples are *queued* as soon as
a chunk is joined, while Redis still applies the chunk's writes (the join's Kafka work overlaps Redis), and
only awaited after the writes. So a crash re-derives at most the samples of the batches whose checkpoint
was not written (the same ids: consumers drop duplicates by ``sample_id``), and never loses one.

The memory of a partition is trusted only while its position equals the persisted clock's: after a
restart, a rebalance, or a failed batch it is loaded again from the checkpoint, and a shard whose
checkpoint is ahead of the clock skips the positions it already holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
import redis

from filters.labels import Arrival, JoinConfig, JoinOutput, PartitionJoin, Sample, UserJoin
from filters.sample_records import encode_sample
from infra import metrics
from infra.clock import Clock, now_ms
from infra.keys import KeyLayout
from infra.lua import Script
from infra.settings import MS_PER_DAY, Settings
from stream.deliveries import Delivery
from stream.producer import EventProducer
from stream.watermarks import PartitionClock

__all__ = ["JoinStage", "KafkaSampleSink", "SampleSink"]

POS_FIELD = b"\x00pos"
DELAY_SAMPLES = 32
_encode_state = msgspec.msgpack.Encoder().encode
_decode_state = msgspec.msgpack.Decoder(UserJoin).decode

Position = tuple[int, int]


class SampleSink(Protocol):
    """Where samples go: :meth:`send` queues them, :meth:`flush` returns once all are acknowledged."""

    def send(self, samples: Sequence[Sample]) -> None: ...

    def flush(self) -> None: ...


class KafkaSampleSink:
    """Samples as JSON on ``kafka.samples_topic``, on the murmur2 partition of ``user_id`` (one producer,
    idempotent), packed ``join.samples_per_record`` to a record (:mod:`filters.sample_records`)."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.kafka.samples_topic
        self._per_record = settings.join.samples_per_record
        self._producer = EventProducer(settings)

    def send(self, samples: Sequence[Sample]) -> None:
        self._producer.send_packed(self._topic, [(s.user_id, s) for s in samples], self._per_record, encode_sample)

    def flush(self) -> None:
        self._producer.flush(60.0)


@dataclass
class _InBatch:
    """A partition of the batch between begin and finish: its join, what the batch made, how many of the
    batch's samples are queued on the sink already."""

    part: _Partition
    out: JoinOutput
    queued: int = 0


@dataclass
class _Partition:
    """One partition's join in memory, the position it holds, and the shard checkpoints ahead of it."""

    join: PartitionJoin
    position: Position
    ahead: dict[int, Position] = field(default_factory=dict)  # shard -> position its checkpoint holds
    state_bytes: dict[str, int] = field(default_factory=dict)  # user -> checkpointed state size
    total_bytes: int = 0  # the sum of state_bytes
    last_events_ms: int = 0  # wall time of its last batch with events (the idle flush)


def _position(raw: bytes | None) -> Position:
    if raw is None:
        return (-1, -1)
    offset, index = raw.split(b":")
    return (int(offset), int(index))


class JoinStage:
    """Runs the join for the ingest stage; :meth:`run` returns the batch's commit step."""

    def __init__(self, client: redis.Redis, settings: Settings, sink: SampleSink, clock: Clock = now_ms) -> None:
        self._redis = client
        self._config = JoinConfig.from_settings(settings)
        self._keys = KeyLayout(settings.redis.shards)
        self._script = Script("join_save.lua")
        self._sink = sink
        self._clock = clock
        self._ttl_ms = settings.kafka.retention_ms + settings.bloom.safety_ttl_days * MS_PER_DAY
        self._parts: dict[int, _Partition] = {}
        self._batch: dict[int, _InBatch] = {}  # the batch between begin and finish
        self._batch_saves: list[tuple[int, int, Position, dict[str, UserJoin | None]]] = []
        self._delay = {kind: metrics.JOIN_EMIT_DELAY.labels(kind=kind) for kind in ("positive", "impression")}
        self._delay["canary"] = metrics.JOIN_EMIT_DELAY.labels(kind="canary")

    # --- one batch: begin, add chunk by chunk (while the feature writes are in flight), close, finish;
    # samples are queued as add and close make them, and acknowledged in the commit step ---
    def begin(self, persisted: Mapping[int, Position]) -> None:
        """Start a batch over the partitions of ``persisted`` (their clock positions before it): memory
        that does not hold exactly that position is loaded from the checkpoint."""
        self._batch = {p: _InBatch(self._partition(p, pos), JoinOutput()) for p, pos in persisted.items()}
        self._batch_saves = []

    def add(self, firsts: Mapping[int, Sequence[tuple[Delivery, bool]]], reached: Mapping[int, int]) -> None:
        """Join the next first deliveries of the batch (``partition -> (delivery, log the click only)``, in
        partition order across calls), then close the windows the chunk's watermarks ``reached``
        (``partition -> watermark``, at most the partition's after the chunk). Closing there is what a batch
        boundary would do, so the samples are the same; the work moves off the batch's serial tail."""
        for p, pairs in firsts.items():
            b = self._batch[p]
            b.part.join.add(self._arrivals(p, b.part, pairs), b.out)
        for p, watermark in reached.items():
            b = self._batch[p]
            b.part.join.close(watermark, b.out)
        self._queue_new(firsts.keys() | reached.keys())  # while Redis applies the chunk

    def close(self, clocks: Mapping[int, PartitionClock]) -> None:
        """Close the windows the batch's watermarks reached and plan the checkpoint (``clocks`` after the
        batch)."""
        for p, clock in clocks.items():
            part, out = self._batch[p].part, self._batch[p].out
            part.join.close(clock.watermark, out)
            position = (clock.offset, clock.index)
            self._batch_saves += self._saves(p, part, position, out)
            if position != part.position:
                part.last_events_ms = self._clock()
            part.position = position
            if part.ahead and all(pos <= position for pos in part.ahead.values()):
                part.ahead.clear()
        self._queue_new(clocks)

    def finish(self) -> Callable[[], None]:
        """End the batch (its feature writes are done); returns the commit step, which waits for the
        acknowledgements of the samples :meth:`add` and :meth:`close` queued, then checkpoints."""
        saves = self._batch_saves
        for b in self._batch.values():
            self._observe(b.out)
        self._batch, self._batch_saves = {}, []
        return lambda: self._commit(saves)

    def _queue_new(self, partitions: Iterable[int]) -> None:
        """Queue on the sink the samples these partitions made since their last queueing (one send; they
        are acknowledged in the commit step)."""
        new: list[Sample] = []
        for p in partitions:
            b = self._batch[p]
            new += b.out.samples[b.queued:]
            b.queued = len(b.out.samples)
        if new:
            self._sink.send(new)

    def abort(self) -> None:
        """The batch failed: the memory of its partitions may be half-changed; load the checkpoint next time."""
        for p in self._batch:
            self._parts.pop(p, None)
        self._batch, self._batch_saves = {}, []

    def flush_idle(self, idle_s: float) -> Callable[[], None] | None:
        """Close every open window of the partitions in memory that had no events for ``idle_s`` seconds of
        wall time (``join.idle_flush_s``, live traffic only) and queue their samples; returns the commit
        (acknowledgements, then the checkpoint), or None when nothing was open and idle."""
        now = self._clock()
        saves: list[tuple[int, int, Position, dict[str, UserJoin | None]]] = []
        for p, part in self._parts.items():
            if now - part.last_events_ms < idle_s * 1000 or not (part.join.open_impressions or part.join.open_waiting):
                continue
            out = JoinOutput()
            part.join.close_open(out)
            saves += self._saves(p, part, part.position, out)
            self._sink.send(out.samples)
            self._observe(out)
        return (lambda: self._commit(saves)) if saves else None

    def _saves(self, p: int, part: _Partition, position: Position,
               out: JoinOutput) -> list[tuple[int, int, Position, dict[str, UserJoin | None]]]:
        """The checkpoint writes of what ``out`` changed; a shard checkpoint ahead keeps its position."""
        return [(p, shard, max(position, part.ahead.get(shard, position)), changed)
                for shard, changed in self._by_shard(out).items()]

    def _partition(self, p: int, persisted: Position) -> _Partition:
        part = self._parts.get(p)
        if part is None or part.position != persisted:
            part = self._parts[p] = self._load(p, persisted)
            part.last_events_ms = self._clock()
        return part

    def _arrivals(self, p: int, part: _Partition, deliveries: Sequence[tuple[Delivery, bool]]) -> list[Arrival]:
        ahead, shard_of = part.ahead, self._keys.shard
        return [Arrival(d.event, d.watermark, d.category, d.author_id, log_only) for d, log_only in deliveries
                if not ahead or (d.offset, d.index) > ahead.get(shard_of("user", d.event.user_id), (-1, -1))]

    def _by_shard(self, out: JoinOutput) -> dict[int, dict[str, UserJoin | None]]:
        groups: dict[int, dict[str, UserJoin | None]] = {}
        for user, state in out.changed.items():
            groups.setdefault(self._keys.shard("user", user), {})[user] = state
        return groups

    def _load(self, p: int, persisted: Position) -> _Partition:
        """The checkpoint of partition ``p`` (every user shard), trusted from the ``persisted`` clock on."""
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(self._keys.shards):
            pipe.hgetall(self._keys.join_state(shard, p))
        users: dict[str, UserJoin] = {}
        sizes: dict[str, int] = {}
        ahead: dict[int, Position] = {}
        for shard, fields in enumerate(pipe.execute()):
            for name, blob in fields.items():
                if name == POS_FIELD:
                    pos = _position(blob)
                    if pos > persisted:
                        ahead[shard] = pos
                    continue
                users[name.decode()] = _decode_state(blob)
                sizes[name.decode()] = len(blob)
        return _Partition(PartitionJoin(self._config, users), persisted, ahead, sizes, sum(sizes.values()))

    def _commit(self, saves: list[tuple[int, int, Position, dict[str, UserJoin | None]]]) -> None:
        self._sink.flush()
        calls = []
        for p, shard, (offset, index), changed in saves:
            part = self._parts.get(p)
            args: list[bytes | str | int] = []
            gone: list[str] = []
            for user, state in changed.items():
                if state is None:
                    gone.append(user)
                    if part is not None:
                        part.total_bytes -= part.state_bytes.pop(user, 0)
                else:
                    blob = _encode_state(state)
                    args += [user, blob]
                    if part is not None:
                        part.total_bytes += len(blob) - part.state_bytes.get(user, 0)
                        part.state_bytes[user] = len(blob)
            calls.append(([self._keys.join_state(shard, p)], [f"{offset}:{index}", self._ttl_ms, len(args) // 2,
                                                                *args, *gone]))
        refused = len(calls) - sum(self._script.run(self._redis, calls)) if calls else 0
        if refused:  # a later owner of the partition checkpointed already: its states stand
            metrics.STALE_WRITES_REFUSED.labels(state="join").inc(refused)
        metrics.JOIN_STATE_BYTES.set(sum(part.total_bytes for part in self._parts.values()))

    def _observe(self, out: JoinOutput) -> None:
        for (family, a, b), n in out.counts.items():
            if family == "samples":
                metrics.JOIN_SAMPLES.labels(kind=a, label=b).inc(n)
            elif family == "actions":
                metrics.JOIN_ACTIONS.labels(action=a, outcome=b).inc(n)
            else:
                metrics.JOIN_IMPRESSIONS.labels(outcome=a).inc(n)
        now = self._clock() / 1000
        step = max(1, len(out.samples) // DELAY_SAMPLES)  # a batch's emission delays, at most ~DELAY_SAMPLES
        for s in out.samples[::step]:
            self._delay[s.kind].observe(max(0.0, now - s.impression_ts / 1000))
        metrics.JOIN_OPEN.labels(kind="impressions").set(sum(x.join.open_impressions for x in self._parts.values()))
        metrics.JOIN_OPEN.labels(kind="waiting_actions").set(sum(x.join.open_waiting for x in self._parts.values()))
