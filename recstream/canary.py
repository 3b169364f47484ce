"""``recstream canary``: end-to-end freshness probes, per partition and feature family.

Every ``interval`` seconds, for each partition of the events topic, the canary produces one impression
and one click of that partition's canary users (ids under :data:`filters.events.CANARY_PREFIX`, placed by
the same murmur2 partitioner as every user) and polls until each family can read them back:

- ``exposure``: the impressed canary item reads as seen in the user's exposure filter;
- ``last_n``: the click, by its event id, is the newest entry of the user's click sequence;
- ``stats``: the user's 1h click count includes it;
- ``samples``: the join passed the click through as a ``canary`` record onto the samples topic;
- ``embeddings``: a published model version has read its samples partition up to the click's ts
  (``Manifest.through_ms``) — measured only while a model version is current.

Each delay (produce → readable) goes into ``recstream_canary_freshness_seconds{family}``; a family not
readable within ``timeout`` counts in ``recstream_canary_misses_total{family}``. Canary users get features
like any user (a handful of keys per partition), but the join never samples them and the trainer skips
their heartbeats, so no model trains on them. The canary clicks also advance every partition's event
time, so the join closes windows on quiet partitions.

Exposure filters hold ``bloom.slice_capacity`` impressions per slice, so the impressed user changes every
epoch (``interval × slice_capacity / 2`` seconds) and its items come from a fixed pool; an item that
already reads as seen (a false positive, or a restarted canary) is skipped before it is produced.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from filters.events import CANARY_FAMILIES, CANARY_PREFIX, Event
from filters.labels import sample_id
from filters.model_store import ModelStore
from filters.sample_records import decode_samples
from infra import metrics
from infra.kafka_log import client_config
from infra.settings import Settings
from serving.client import FeatureClient
from stream.batching import KeyPartitioner
from stream.producer import EventProducer

__all__ = ["FAMILIES", "Canary", "RoundResult", "canary_users"]

FAMILIES = CANARY_FAMILIES
_ITEM = f"{CANARY_PREFIX}.item"
_LOOKAHEAD = 256  # pool items checked (one ``seen`` call) for the next unseen one


def canary_users(partitions: int, tag: str = "") -> dict[int, str]:
    """One canary user id per partition: the first ``__canary__.<p>.<tag><k>`` the partitioner places on ``p``.

    >>> users = canary_users(4)
    >>> sorted(users), all(u.startswith("__canary__.") for u in users.values())
    ([0, 1, 2, 3], True)
    >>> canary_users(4, tag="x7.")[0].startswith("__canary__.0.x7.")
    True
    """
    place = KeyPartitioner(partitions)
    out: dict[int, str] = {}
    for p in range(partitions):
        k = 0
        while place(f"{CANARY_PREFIX}.{p}.{tag}{k}") != p:
            k += 1
        out[p] = f"{CANARY_PREFIX}.{p}.{tag}{k}"
    return out


@dataclass(frozen=True)
class Sent:
    """One partition's probe of a round: the click (and the impression, when exposure is measured)."""

    partition: int
    user: str
    event_id: str
    ts: int  # ms, event time = produce time
    at: float  # s, the canary's clock when produced
    impression: tuple[str, str] | None = None  # (user, item)


@dataclass(frozen=True)
class RoundResult:
    """What one round measured: per family, the delays (s) of the probes that became readable and the
    number that did not within the timeout. A family can have fewer probes than partitions (no exposure
    probe where every pool item checked already reads as seen), and that is no miss."""

    delays: dict[str, list[float]]
    missed: dict[str, int]


class SampleWatch:
    """Reads the samples topic from its end for canary records (assign and seek; no group, no commits)."""

    def __init__(self, settings: Settings) -> None:
        self.topic, self.partitions = settings.kafka.samples_topic, settings.kafka.partitions
        self._consumer = Consumer({**client_config(settings.kafka, "canary"), "enable.auto.commit": False,
                                   "group.id": f"{settings.worker.app_id}-canary"})

    def rewind_to_end(self) -> None:
        """Read on from each partition's current end (nothing produced before can be this round's)."""
        ends = [TopicPartition(self.topic, p, self._consumer.get_watermark_offsets(
            TopicPartition(self.topic, p), timeout=5)[1]) for p in range(self.partitions)]
        self._consumer.assign(ends)

    def poll(self) -> set[str]:
        """The sample ids of the canary records read since the last poll."""
        found: set[str] = set()
        for m in self._consumer.consume(1000, timeout=0.01):
            value = m.value() if m.error() is None else None
            if value and b'"canary"' in value:
                found.update(s.sample_id for s in decode_samples(value) if s.kind == "canary")
        return found

    def close(self) -> None:
        self._consumer.close()


class Canary:
    """Probes every partition in each family once per :meth:`round`."""

    def __init__(self, settings: Settings, client: FeatureClient, timeout_s: float = 30.0, interval_s: float = 5.0,
                 families: Sequence[str] = FAMILIES, clock: Callable[[], float] = time.time) -> None:
        self.settings, self.client, self.timeout_s, self.clock = settings, client, timeout_s, clock
        self.families = [f for f in FAMILIES if f in families]
        self.users = canary_users(settings.kafka.partitions)
        self.epoch_s = max(60.0, interval_s * max(1, settings.bloom.slice_capacity // 2))
        self._epoch: tuple[int, dict[int, str]] = (-1, {})
        self._next_item: dict[int, int] = {}
        self._store = ModelStore(client.redis, settings.redis.shards)
        self._samples = SampleWatch(settings) if "samples" in self.families else None
        self._seq = int(clock() * 1000)
        self._found: set[str] = set()

    def close(self) -> None:
        if self._samples is not None:
            self._samples.close()

    def _clicks_1h(self, user: str) -> float:
        return float(self.client.stats("user", user, windows=["1h"], actions=["click"])["1h"]["click"])

    def _active(self) -> list[str]:
        return [f for f in self.families if f != "embeddings" or self._store.current() is not None]

    def _exposure_target(self, partition: int) -> tuple[str, str] | None:
        """This epoch's canary user of ``partition`` and the next pool item it has not seen (None: all seen)."""
        epoch = int(self.clock() // self.epoch_s)
        if self._epoch[0] != epoch:
            self._epoch = (epoch, canary_users(self.settings.kafka.partitions, tag=f"x{epoch}."))
            self._next_item.clear()
        user, pool = self._epoch[1][partition], self.settings.bloom.slice_capacity
        start = self._next_item.get(partition, 0)
        # one read for the next items of the pool: a canary restarted within the epoch skips at once every
        # item its predecessor impressed
        items = [f"{CANARY_PREFIX}.i{(start + k) % pool}" for k in range(min(_LOOKAHEAD, pool))]
        for k, seen in enumerate(self.client.seen(user, items)):
            if not seen:
                self._next_item[partition] = start + k + 1
                return user, items[k]
        self._next_item[partition] = start + len(items)
        return None

    def round(self, producer: EventProducer) -> RoundResult:
        """Produce one canary click (and impression) per partition; wait until each family reads it."""
        families = self._active()
        before = {user: self._clicks_1h(user) for user in self.users.values()} if "stats" in families else {}
        if self._samples is not None and "samples" in families:
            self._samples.rewind_to_end()
        sent: list[Sent] = []
        for p, user in self.users.items():
            self._seq += 1
            now = self.clock()
            ts = int(now * 1000)
            target = self._exposure_target(p) if "exposure" in families else None
            if target is not None:
                producer.send(Event(event_id=f"{CANARY_PREFIX}.e{self._seq}i", type="impression", user_id=target[0],
                                    item_id=target[1], ts=ts))
            event_id = f"{CANARY_PREFIX}.e{self._seq}"
            producer.send(Event(event_id=event_id, type="click", user_id=user, item_id=_ITEM, ts=ts))
            sent.append(Sent(p, user, event_id, ts, now, target))
        producer.flush(10)
        return self._wait(sent, families, before)

    def _readable(self, family: str, s: Sent, before: dict[str, float]) -> bool:
        if family == "exposure":
            return s.impression is not None and self.client.seen(s.impression[0], [s.impression[1]])[0]
        if family == "last_n":
            newest = self.client.last_n(s.user, "click", 1)
            return bool(newest) and newest[0].event_id == s.event_id
        if family == "stats":
            return self._clicks_1h(s.user) > before[s.user]
        if family == "samples":
            return sample_id("canary", s.event_id) in self._found
        current = self._store.current()
        return current is not None and self._store.manifest(current).through_ms.get(s.partition, 0) >= s.ts

    def _wait(self, sent: list[Sent], families: list[str], before: dict[str, float]) -> RoundResult:
        pending = {(k, f) for k in range(len(sent)) for f in families
                   if f != "exposure" or sent[k].impression is not None}
        delays: dict[str, list[float]] = {f: [] for f in families}
        deadline = self.clock() + self.timeout_s
        self._found.clear()
        while pending and self.clock() < deadline:
            if self._samples is not None and any(f == "samples" for _, f in pending):
                self._found |= self._samples.poll()
            for k, family in sorted(pending):
                if self._readable(family, sent[k], before):
                    delay = self.clock() - sent[k].at
                    delays[family].append(delay)
                    metrics.CANARY_FRESHNESS.labels(family=family).observe(delay)
                    pending.discard((k, family))
            time.sleep(0.02)
        missed = dict.fromkeys(families, 0)
        for _k, family in pending:
            metrics.CANARY_MISSES.labels(family=family).inc()
            missed[family] += 1
        return RoundResult(delays, missed)
