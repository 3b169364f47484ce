"""Redis Cluster: on a local 3-master cluster the pipeline reaches the same state as on one Redis.

Two workers share the 8 partitions while events stream in, the trainer beside them; one worker and the
trainer are SIGKILLed and restarted. Afterwards every Bloom answer, last-N sequence and statistic equals the
brute-force reference, the distinct samples equal the reference join, the trainer trained every distinct
positive once, the data is spread over all three masters, the serving layer answers from the cluster, and
`recstream rebuild --flush` rebuilds the same features into it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from filters.model_store import ModelStore
from infra.redis_client import connect
from infra.redis_cluster import LocalCluster, running_cluster
from infra.settings import RedisSettings, Settings
from infra.topics import ensure_topics
from recstream.cli import main
from serving.client import FeatureClient
from stream.worker_process import WorkerProcess
from tests.chaos.chaos_run import chaos_settings, run_chaos
from tests.conftest import ServicePair, free_ports
from tests.pipeline_check import (
    assert_features_match,
    assert_state_matches,
    distinct_positives,
    make_stream,
    private_pipeline,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    ports = free_ports(6)  # 3 nodes: client port, cluster bus port
    nodes = list(zip(ports[:3], ports[3:], strict=True))
    with running_cluster(tmp_path_factory.mktemp("redis-cluster"), nodes) as local:
        yield local


@pytest.fixture
def settings(services: ServicePair, cluster: LocalCluster, tmp_path: Path) -> Iterator[Settings]:
    base = chaos_settings(private_pipeline(services.settings))
    url = cluster.url.replace("redis://", "redis+cluster://")  # the scheme alone says "cluster"
    s = base.model_copy(update={"home": tmp_path, "redis": RedisSettings(url=url, shards=base.redis.shards)})
    assert s.redis.cluster
    ensure_topics(s)
    yield s


def keys_per_node(cluster: LocalCluster) -> list[int]:
    return [int(redis.Redis(port=port).dbsize()) for port in cluster.ports]


@pytest.mark.timeout(900)
def test_two_workers_and_the_trainer_on_a_cluster_equal_the_reference(settings: Settings,
                                                                      cluster: LocalCluster) -> None:
    events, meta = make_stream(seed=71, n=8_000, users=60, items=200)
    logs = settings.home / "logs"
    with WorkerProcess(settings, logs / "second-worker.log"):
        report = run_chaos(settings, events, meta, worker_kills=2, trainer_kills=2, seed=7, log_dir=logs,
                           rate=1000, progress=print)
    assert report.worker_kills == 2 and report.trainer_kills == 2
    events, _ = assert_state_matches(settings, events)
    store = ModelStore(connect(settings.redis.effective_url, cluster=True), settings.redis.shards)
    manifest = store.manifest(store.current() or "")
    assert manifest.samples_seen == distinct_positives(settings, events)
    assert min(keys_per_node(cluster)) > 100, keys_per_node(cluster)  # every master holds a share

    client = FeatureClient(settings=settings)
    user = max({e.user_id for e in events}, key=lambda u: sum(e.user_id == u for e in events))
    items = sorted({e.item_id for e in events})
    features = client.request_features(user, items)
    assert features.scores is not None and features.candidate_stats is not None
    assert features.candidate_stats.values.shape[0] == len(items)
    for k in (0, len(items) // 2, len(items) - 1):  # the per-slot reads put every row back in its place
        assert features.candidate_stats.row(k) == client.stats("item", items[k])
    shown = {i for i, seen in zip(items, client.seen(user, items), strict=True) if seen}
    recommended = [item for item, _ in client.recommend(user, k=10).items]
    assert recommended and not shown & set(recommended)

    # the cluster lost its feature keys: `recstream rebuild --flush` (a SCAN and UNLINK over every master),
    # once the SIGKILLed trainer's member left its group (rebuild refuses a live group)
    deadline = time.monotonic() + 60
    while "live member" in (result := CliRunner().invoke(main, ["rebuild", "--flush"], obj={"settings": settings})
                            ).output and time.monotonic() < deadline:
        time.sleep(1)
    assert result.exit_code == 0 and "rebuilt after deleting" in result.output, result.output
    assert_features_match(settings, events)
