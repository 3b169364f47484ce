"""``recstream rebuild``: every feature rebuilt into an empty Redis from the retained Kafka topics.

Bloom filters, last-N sequences, statistics, item metadata, the join's state and the worker's positions are
functions of the events and items topics, so replaying what the topics retain reproduces them exactly
(as long as the retention covers the longest feature horizon: 30 days of statistics and exposure by
default, which is why the local broker keeps ``kafka.retention_ms``, 35 days; docs/operations.md says what a
shorter retention loses). The steps:

1. refuse while a worker of the group is alive (it would race the replay);
2. refuse when Redis holds feature state, unless ``--flush`` (then recstream's feature keys are deleted;
   model versions, embeddings and the trainer's ids are kept);
3. move the worker group to the earliest retained offsets (:func:`stream.resume.reconcile` does exactly
   that for partitions Redis knows nothing of);
4. run the worker until it has caught up with what the topics held at the start, with a progress bar;
5. move the trainer's group to the end of the samples topic: the replay re-emitted every sample, and those
   are not trained again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from tqdm import tqdm

from infra.errors import KafkaError, StateError
from infra.kafka_log import client_config
from infra.keys import LAYOUT, LAYOUT_KEY
from infra.redis_client import check_layout, connect
from infra.settings import Settings
from infra.topics import ensure_topics, require_kafka
from stream.lag import LagProbe
from stream.resume import reconcile
from stream.worker_process import WorkerProcess

__all__ = ["RebuildResult", "is_feature_key", "run_rebuild"]

_MODEL_PARTS = (":emb:", ":vec:")


def is_feature_key(key: str) -> bool:
    """Whether a key holds state the worker derives from the topics (not a model, not the layout marker).

    >>> [is_feature_key(k) for k in ("rs2:{u.3}:u7:st", "rs2:wm:g:ev:0", "rs2:{u.3}:emb:v000002",
    ...                                  "rs2:model:current", "rs2:trainer:g:seen:4", "rs2:layout", "other")]
    [True, True, False, False, False, False, False]
    """
    if not key.startswith(f"{LAYOUT}:") or key == LAYOUT_KEY:
        return False
    if key.startswith((f"{LAYOUT}:model:", f"{LAYOUT}:trainer:")):
        return False
    return not any(part in key for part in _MODEL_PARTS)


@dataclass(frozen=True)
class RebuildResult:
    events: int  # records replayed from the events topic
    seconds: float
    flushed: int  # feature keys deleted first (--flush)

    @property
    def records_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def _feature_keys(client: redis.Redis) -> list[bytes]:
    return [k for k in client.scan_iter(match=f"{LAYOUT}:*", count=5000) if is_feature_key(k.decode())]


def _refuse_live_group(admin: AdminClient, group: str, who: str) -> None:
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    except KafkaException:
        return  # a group that never existed
    if desc.members:
        msg = (f"consumer group {group!r} has {len(desc.members)} live member(s): stop every {who} before a "
               f"rebuild (a SIGKILLed one stays listed for worker.session_timeout_s)")
        raise StateError(msg)


def _skip_replayed_samples(admin: AdminClient, settings: Settings) -> None:
    topic = settings.kafka.samples_topic
    parts = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in parts},  # type: ignore[no-untyped-call]
                              request_timeout=10)
    moved = [TopicPartition(tp.topic, tp.partition, f.result().offset) for tp, f in ends.items()]
    group = settings.learning.group
    try:
        result = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, moved)],
                                                    request_timeout=10)[group].result()
        failed = [str(tp.error) for tp in result.topic_partitions if tp.error]
    except KafkaException as exc:
        failed = [str(exc)]
    if failed:
        msg = f"rebuilt, but the trainer group {group!r} was not moved past the re-emitted samples: {failed[0]}"
        raise KafkaError(msg)


def run_rebuild(settings: Settings, flush: bool, timeout_s: float = 6 * 3600) -> RebuildResult:
    """Replay the retained topics into this Redis (see the module docstring)."""
    client = connect(settings.redis.effective_url, cluster=settings.redis.cluster)
    check_layout(client, settings.redis.shards)
    require_kafka(settings)
    ensure_topics(settings)
    admin = AdminClient(client_config(settings.kafka, "rebuild"))
    _refuse_live_group(admin, settings.worker.app_id, "worker")
    _refuse_live_group(admin, settings.learning.group, "trainer")
    stale = _feature_keys(client)
    if stale and not flush:
        msg = (f"Redis holds {len(stale):,} feature keys; rebuild fills an empty Redis: pass --flush to delete "
               f"recstream's feature keys first (model versions are kept)")
        raise StateError(msg)
    for k in tqdm(range(0, len(stale), 1000), desc="flush", unit="k keys", disable=None if stale else True):
        client.unlink(*stale[k:k + 1000])
    reconcile(settings, client)
    probe = LagProbe(settings)
    rows = probe.read()
    total = sum(r.lag for r in rows)
    events = sum(r.lag for r in rows if r.topic == settings.kafka.events_topic)
    started = time.monotonic()
    with WorkerProcess(settings, settings.home / "logs" / "rebuild-worker.log"), \
            tqdm(total=total, desc="replay", unit="rec", disable=None) as bar:
        targets = {(r.topic, r.partition): r.end for r in rows}
        while True:
            rows = probe.read()
            behind = sum(max(0, targets[(r.topic, r.partition)] - (r.committed or 0)) for r in rows)
            bar.update(total - behind - bar.n)
            if behind == 0:
                break
            if time.monotonic() - started > timeout_s:
                msg = f"the rebuild did not catch up within {timeout_s:.0f} s ({behind:,} records behind)"
                raise KafkaError(msg)
            time.sleep(0.5)
    _skip_replayed_samples(admin, settings)
    return RebuildResult(events, time.monotonic() - started, len(stale))
