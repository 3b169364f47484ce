"""Consumer lag: committed vs end offsets per consumer group and partition (``recstream lag``).

The pure part decides what "caught up" means; the adapter asks the broker with the confluent AdminClient.
A partition never committed counts as committed at 0 (Faust starts from ``earliest``).

>>> rows = lag_rows({("t", 0): 5, ("t", 1): None}, {("t", 0): 7, ("t", 1): 0}, "g")
>>> [(r.partition, r.committed, r.end, r.lag) for r in rows]
[(0, 5, 7, 2), (1, 0, 0, 0)]
>>> caught_up(rows, {("t", 0): 5}), caught_up(rows, {("t", 0): 7})
(True, False)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from infra import metrics
from infra.errors import KafkaError
from infra.kafka_log import client_config
from infra.settings import Settings
from infra.topics import CommittedOffsets, require_kafka, transient

log = logging.getLogger(__name__)

TP = tuple[str, int]


@dataclass(frozen=True)
class LagRow:
    """Lag of one consumer group on one partition."""

    group: str
    topic: str
    partition: int
    committed: int
    end: int
    lag_s: float = 0.0  # age of the oldest unprocessed record (0 when caught up or nothing was produced)

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)

    def as_json(self) -> dict[str, object]:
        """The row as a JSON object (``recstream lag --json``)."""
        return {"group": self.group, "topic": self.topic, "partition": self.partition,
                "committed": self.committed, "end": self.end, "lag": self.lag, "lag_seconds": round(self.lag_s, 3)}


def lag_rows(committed: Mapping[TP, int | None], ends: Mapping[TP, int], group: str) -> list[LagRow]:
    """Join committed and end offsets into rows, sorted by topic and partition."""
    return [
        LagRow(group, topic, p, committed.get((topic, p)) or 0, end)
        for (topic, p), end in sorted(ends.items())
    ]


def partition_lag(highwater: int | None, last_offset: int, last_ts_s: float, now_s: float) -> tuple[int, float]:
    """The worker's own lag on one partition after a batch: ``(messages, seconds)``. Messages = the
    partition's highwater − the next offset to process; seconds = 0 when caught up, else the age of the
    last record processed (an upper bound of the oldest unprocessed one's age: it is older than it). An
    unknown highwater (nothing fetched yet) counts as caught up.

    >>> partition_lag(10, 9, 100.0, 130.0), partition_lag(25, 9, 100.0, 130.0), partition_lag(None, 3, 1.0, 9.0)
    ((0, 0.0), (15, 30.0), (0, 0.0))
    """
    if highwater is None or highwater <= last_offset + 1:
        return 0, 0.0
    return highwater - last_offset - 1, max(0.0, now_s - last_ts_s)


def caught_up(rows: list[LagRow], targets: Mapping[TP, int]) -> bool:
    """True when every partition's committed offset reached its target (default: its current end)."""
    return all(r.committed >= targets.get((r.topic, r.partition), r.end) for r in rows)


class LagProbe:
    """Reads committed and end offsets of the app's consumer group from the broker."""

    def __init__(self, settings: Settings) -> None:
        kafka = settings.kafka
        self.group = settings.worker.app_id
        self.bootstrap = kafka.bootstrap
        self.settings = settings
        self.source_topics = [kafka.events_topic, kafka.items_topic]
        self._admin = self._new_admin()
        self._committed: CommittedOffsets | None = None

    def _new_admin(self) -> AdminClient:
        return AdminClient(client_config(self.settings.kafka, "lag"))

    def _renew(self) -> None:
        """New clients: one that saw its broker restart can stay stuck."""
        self._admin = self._new_admin()
        if self._committed is not None:
            self._committed.close()
            self._committed = None

    def _partitions(self, timeout: float) -> list[TopicPartition]:
        try:
            meta = self._admin.list_topics(timeout=timeout)
        except KafkaException:
            require_kafka(self.settings)  # the one-line reason
            raise
        tps: list[TopicPartition] = []
        for topic in self.source_topics:
            if topic not in meta.topics:
                msg = f"topic {topic!r} does not exist; run `recstream infra up` first"
                raise KafkaError(msg)
            tps.extend(TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions))
        return tps

    def read(self, timeout: float = 10.0) -> list[LagRow]:
        """One snapshot of the group's lag on every partition of the app's topics."""
        tps = self._partitions(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                ends, result = self._offsets(tps, timeout)
                break
            except KafkaException as exc:
                self._renew()
                # e.g. COORDINATOR_LOAD_IN_PROGRESS just after the broker started: ask again
                if transient(exc) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                msg = f"cannot read offsets of group {self.group!r}: {exc}"
                raise KafkaError(msg) from None
        return lag_rows(result, ends, self.group)

    def _offsets(self, tps: list[TopicPartition], timeout: float) -> tuple[dict[TP, int], dict[TP, int | None]]:
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        ends_f = self._admin.list_offsets({tp: latest for tp in tps}, request_timeout=timeout)
        ends = {(tp.topic, tp.partition): f.result().offset for tp, f in ends_f.items()}
        if self._committed is None:
            self._committed = CommittedOffsets(self.settings, self.group, "lag")
        return ends, self._committed.read(tps, timeout)

    def with_seconds(self, rows: list[LagRow], now_ms: int, timeout: float = 5.0) -> list[LagRow]:
        """The rows with ``lag_s``: now minus the timestamp of the first unprocessed record of each
        partition that is behind (read without joining the group); 0 where caught up."""
        behind = [r for r in rows if r.lag > 0]
        if not behind:
            return rows
        consumer = Consumer({**client_config(self.settings.kafka, "lag"), "group.id": f"{self.group}-lag-probe",
                             "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition(r.topic, r.partition, r.committed) for r in behind])
            first: dict[TP, int] = {}
            deadline = time.monotonic() + timeout
            while len(first) < len(behind) and time.monotonic() < deadline:
                for m in consumer.consume(len(behind), timeout=0.5):
                    if m.error() is None:
                        first.setdefault((str(m.topic()), int(m.partition() or 0)), m.timestamp()[1])
                consumer.assign([TopicPartition(r.topic, r.partition, r.committed) for r in behind
                                 if (r.topic, r.partition) not in first])
        finally:
            consumer.close()
        return [dataclasses.replace(r, lag_s=max(0.0, (now_ms - first[(r.topic, r.partition)]) / 1000))
                if (r.topic, r.partition) in first else r for r in rows]

    def wait_until_caught_up(self, timeout_s: float, poll_s: float = 0.5) -> list[LagRow]:
        """Block until everything produced to the source topics so far is consumed; raises
        :class:`KafkaError` on timeout."""
        deadline = time.monotonic() + timeout_s
        rows = self.read()
        targets = {(r.topic, r.partition): r.end for r in rows}
        while True:
            if caught_up(rows, targets):
                return rows
            if time.monotonic() > deadline:
                behind = sum(r.lag for r in rows)
                msg = f"not caught up after {timeout_s:.0f} s: {behind} messages still behind"
                raise KafkaError(msg)
            time.sleep(poll_s)
            rows = self.read()


def export_rows(rows: list[LagRow]) -> None:
    """Set the ``recstream_group_lag_*`` gauges from a snapshot (``recstream lag --serve``)."""
    for r in rows:
        labels = {"group": r.group, "topic": r.topic, "partition": str(r.partition)}
        metrics.GROUP_LAG.labels(**labels).set(r.lag)
        metrics.GROUP_LAG_SECONDS.labels(**labels).set(r.lag_s)


class LagExporter:
    """``recstream lag --serve``: each :meth:`refresh` reads the lag, exports it and sets
    ``recstream_kafka_up`` to 1; when Kafka does not answer it sets 0 and logs one warning when Kafka goes
    down (none while it stays down), so an exporter outlives an outage and says so."""

    def __init__(self, probe: LagProbe, clock: Callable[[], float] = time.time, timeout_s: float = 5.0) -> None:
        self.probe, self.clock, self.timeout_s = probe, clock, timeout_s
        self.up: bool | None = None  # None: not read yet (the gauge says 0 until a read answers)

    def refresh(self) -> list[LagRow] | None:
        """The rows exported, or None when Kafka did not answer."""
        try:
            rows = self.probe.with_seconds(self.probe.read(self.timeout_s), int(self.clock() * 1000))
        except KafkaError as exc:
            if self.up is not False:
                log.warning("recstream lag --serve: %s; exporting recstream_kafka_up 0 until it answers", exc)
            self.up = False
            metrics.KAFKA_UP.set(0)
            return None
        export_rows(rows)
        self.up = True
        metrics.KAFKA_UP.set(1)
        return rows


def format_rows(rows: list[LagRow]) -> str:
    """A plain-text table of lag rows, one line per partition, plus a total."""
    lines = [f"{'group':<14} {'topic':<24} {'part':>4} {'committed':>10} {'end':>10} {'lag':>8} {'lag s':>8}"]
    for r in rows:
        lines.append(f"{r.group:<14} {r.topic:<24} {r.partition:>4} {r.committed:>10} {r.end:>10} {r.lag:>8} "
                     f"{r.lag_s:>8.1f}")
    oldest = max((r.lag_s for r in rows), default=0.0)
    lines.append(f"total lag: {sum(r.lag for r in rows)} messages, oldest {oldest:.1f} s")
    return "\n".join(lines)
