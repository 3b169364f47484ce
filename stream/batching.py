"""Placement and batching of events into Kafka records, shared by the producer and the worker (pure).

:func:`murmur2_partition` is where every murmur2 producer (Kafka's Java client, aiokafka / Faust,
librdkafka's ``murmur2_random``) puts a key; :class:`KeyPartitioner` caches it for the worker, which
checks that every event of a record belongs to the record's partition. :class:`PartitionBatcher`
packs a partition's events into batched records (docs/events.md); :func:`pack_grouped` packs values that
are all at hand (the worker's samples) with one encoder call per record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from aiokafka.partitioner import murmur2

from infra.clock import Clock

__all__ = ["BatchRecord", "KeyPartitioner", "PartitionBatcher", "murmur2_partition", "pack_grouped"]


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition a murmur2 producer (Java, aiokafka/Faust, librdkafka ``murmur2_random``) picks.

    >>> murmur2_partition(b"u1", 8) == murmur2_partition(b"u1", 8), 0 <= murmur2_partition(b"x", 3) < 3
    (True, True)
    """
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class KeyPartitioner:
    """:func:`murmur2_partition` of ``str`` keys among ``partitions``, with a bounded cache.

    >>> place = KeyPartitioner(8)
    >>> place("u1") == murmur2_partition(b"u1", 8)
    True
    """

    def __init__(self, partitions: int, max_cached: int = 100_000) -> None:
        self.partitions = partitions
        self._max = max_cached
        self._cache: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        p = self._cache.get(key)
        if p is None:
            if len(self._cache) >= self._max:
                self._cache.clear()
            p = self._cache[key] = murmur2_partition(key.encode(), self.partitions)
        return p


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class BatchRecord(NamedTuple):
    """One batched record ready to produce: ``value`` is a JSON array of ``events`` events."""

    partition: int
    key: bytes
    """The first event's key (``user_id``); every event of the record maps to ``partition``."""
    value: bytes
    events: int


class _Buffer:
    __slots__ = ("items", "key", "since", "size")

    def __init__(self, key: bytes, since: int) -> None:
        self.key = key
        self.since = since
        self.items: list[bytes] = []
        self.size = 1  # "[" + items joined by "," + "]" == 1 + sum(len(item) + 1)


class PartitionBatcher:
    """Per-partition buffers of encoded events that come out as batched records (pure, no Kafka).

    :meth:`add` returns the records that became ready: a buffer is emitted when it holds
    ``max_events`` events, when the next event would push it past ``max_bytes`` (an event larger
    than that goes alone), or when its oldest event is ``linger_ms`` old. Records of one partition
    come out in add order. ``clock`` returns milliseconds (monotonic by default).

    >>> now = [0]
    >>> b = PartitionBatcher(max_events=2, max_bytes=1000, linger_ms=5, clock=lambda: now[0])
    >>> b.add(1, b"u1", b'{"a":1}'), b.pending_events
    ([], 1)
    >>> b.add(1, b"u9", b'{"a":2}')
    [BatchRecord(partition=1, key=b'u1', value=b'[{"a":1},{"a":2}]', events=2)]
    >>> b.add(3, b"u3", b'{"a":3}'); now[0] = 5; b.due()
    []
    [BatchRecord(partition=3, key=b'u3', value=b'[{"a":3}]', events=1)]
    """

    def __init__(self, max_events: int, max_bytes: int, linger_ms: float, clock: Clock = _monotonic_ms) -> None:
        if max_events < 1 or max_bytes < 3 or linger_ms < 0:
            msg = f"bad batch bounds: max_events={max_events}, max_bytes={max_bytes}, linger_ms={linger_ms}"
            raise ValueError(msg)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.linger_ms = linger_ms
        self._clock = clock
        self._buffers: dict[int, _Buffer] = {}
        self._next_due = float("inf")

    @property
    def pending_events(self) -> int:
        """Events waiting in partial batches."""
        return sum(len(b.items) for b in self._buffers.values())

    def add(self, partition: int, key: bytes, encoded: bytes) -> list[BatchRecord]:
        """Buffer one encoded event for ``partition``; returns the records that are now ready."""
        now = self._clock()
        ready: list[BatchRecord] = []
        buf = self._buffers.get(partition)
        if buf is not None and buf.size + len(encoded) + 1 > self.max_bytes:
            ready.append(self._take(partition))
            buf = None
        if buf is None:
            buf = self._buffers[partition] = _Buffer(key, now)
            self._next_due = min(self._next_due, now + self.linger_ms)
        buf.items.append(encoded)
        buf.size += len(encoded) + 1
        if len(buf.items) >= self.max_events or buf.size >= self.max_bytes:
            ready.append(self._take(partition))
        if now >= self._next_due:
            ready += self._expired(now)
        return ready

    def due(self) -> list[BatchRecord]:
        """The partial batches whose oldest event waited ``linger_ms`` or longer."""
        now = self._clock()
        return self._expired(now) if now >= self._next_due else []

    def drain(self) -> list[BatchRecord]:
        """Every partial batch, now (flush, close, or before a raw record must keep its place)."""
        ready = [self._take(p) for p in list(self._buffers)]
        self._next_due = float("inf")
        return ready

    def _expired(self, now: int) -> list[BatchRecord]:
        ready = [self._take(p) for p, b in list(self._buffers.items()) if now >= b.since + self.linger_ms]
        self._next_due = min((b.since + self.linger_ms for b in self._buffers.values()), default=float("inf"))
        return ready

    def _take(self, partition: int) -> BatchRecord:
        buf = self._buffers.pop(partition)
        return BatchRecord(partition, buf.key, b"[" + b",".join(buf.items) + b"]", len(buf.items))


def pack_grouped(keyed: Sequence[tuple[str, Any]], place: Callable[[str], int], per_record: int, max_bytes: int,
                 encode: Callable[[list[Any]], bytes]) -> list[BatchRecord]:
    """Records of JSON arrays (``encode`` of a list) of at most ``per_record`` values and ``max_bytes``
    (an array over it is halved until it fits or holds one value), each of one partition: the values
    whose key ``place`` maps there, in the given order; the first value's key keys the record.

    >>> import json
    >>> def enc(vs): return json.dumps(vs).encode()
    >>> recs = pack_grouped([("a", 1), ("b", 2), ("a", 3), ("a", 4)], lambda k: ord(k) % 2, 2, 100, enc)
    >>> [(r.partition, r.key, r.value, r.events) for r in recs]
    [(1, b'a', b'[1, 3]', 2), (1, b'a', b'[4]', 1), (0, b'b', b'[2]', 1)]
    >>> [r.value for r in pack_grouped([("a", "x" * 8)] * 3, lambda k: 0, 3, 30, enc)]
    [b'["xxxxxxxx"]', b'["xxxxxxxx", "xxxxxxxx"]']
    """
    groups: dict[int, tuple[list[str], list[Any]]] = {}
    for key, value in keyed:
        partition = place(key)
        group = groups.get(partition)
        if group is None:
            group = groups[partition] = ([], [])
        group[0].append(key)
        group[1].append(value)
    out: list[BatchRecord] = []
    for partition, (keys, values) in groups.items():
        for start in range(0, len(values), per_record):
            _pack_span(partition, keys, values, start, min(start + per_record, len(values)), max_bytes, encode, out)
    return out


def _pack_span(partition: int, keys: list[str], values: list[Any], start: int, stop: int, max_bytes: int,
               encode: Callable[[list[Any]], bytes], out: list[BatchRecord]) -> None:
    blob = encode(values[start:stop])
    if len(blob) <= max_bytes or stop - start == 1:
        out.append(BatchRecord(partition, keys[start].encode(), blob, stop - start))
        return
    middle = (start + stop) // 2
    _pack_span(partition, keys, values, start, middle, max_bytes, encode, out)
    _pack_span(partition, keys, values, middle, stop, max_bytes, encode, out)
