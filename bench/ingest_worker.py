"""The full-worker variant of ``recstream bench ingest``: ``recstream worker`` processes over a pre-filled topic.

Each run gets a consumer group, side topics (items, dead letters) and worker homes of its own,
and an empty Redis (FLUSHALL). Events/s = n / (all applied − first new key in Redis): the first key added
after the first member joined the group (start-up keys such as the layout key are written before) appears
while the first batch is written, so it stands for "first event consumed" (the first fetch and decode are
not timed); ``eps_from_assignment`` times from the group's first assignment instead (it includes Faust's
start-up after the assignment: a lower bound). The end is when Redis holds every record as applied (each
partition's saved clock at the topic's end, polled every 5 ms): the last features readable.
``eps_committed`` ends instead when the committed offsets caught up (:class:`stream.lag.LagProbe`'s rule,
which the run also waits for): Faust commits every second, and the lag is polled every 0.2 s and must read
caught up twice, so that end is up to ~1.4 s late, 10–20 % of a 200k-event run. A worker
that exits, or commits the topic without writing to Redis, is an error; dead letters are a warning.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import redis
from confluent_kafka import ConsumerGroupState, KafkaException
from tqdm import tqdm

from bench.common import BAR, records_in, with_sections
from infra.settings import Settings
from infra.topics import admin_client, ensure_topics
from stream.lag import LagProbe, caught_up
from stream.watermarks import WatermarkStore
from stream.worker_process import WorkerProcess


def _worker_settings(base: Settings, topic: str, tag: str) -> Settings:
    """The base settings with ``topic`` as the events topic and a group and side topics of this run's own."""
    return with_sections(base, kafka={
        "events_topic": topic, "items_topic": f"{tag}-items", "dlq_topic": f"{tag}-dlq",
        "samples_topic": f"{tag}-samples",
    }, worker={"app_id": tag})


def _check_alive(workers: Sequence[WorkerProcess]) -> None:
    for w in workers:
        if not w.alive():
            code = w.stop()
            lines = w.log_path.read_text(errors="replace").strip().splitlines() if w.log_path.exists() else []
            msg = f"worker {w.pid} exited with code {code}: {' | '.join(lines[-3:]) or 'empty log'}"
            raise RuntimeError(msg)


def _group_state(admin: Any, group: str) -> tuple[bool, bool]:
    """(the group has a member, a member holds partitions); any state: while a second member joins, the
    group rebalances (members listed without assignment) and the first member may already be consuming."""
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
    except KafkaException:
        return False, False
    members = desc.members if desc.state != ConsumerGroupState.DEAD else []
    return bool(members), any(m.assignment.topic_partitions for m in members)


def _wait_start(
    settings: Settings, client: redis.Redis, probe: LagProbe, workers: Sequence[WorkerProcess]
) -> dict[str, float]:
    """Perf-counter marks: ``first_key`` (the first key added to Redis after the first member joined the group
    ≈ the first batch consumed; keys a worker writes at start-up, such as the layout key, come before it
    joins), ``assigned`` (a member first seen holding partitions) or, if nothing is written, ``first_commit``."""
    admin, marks = admin_client(settings), dict[str, float]()
    deadline, next_commit, baseline = time.monotonic() + 180, 0.0, -1
    while time.monotonic() < deadline:
        if baseline < 0 or "assigned" not in marks:
            joined, assigned = _group_state(admin, probe.group)
            if joined and baseline < 0:
                baseline = marks["startup_keys"] = int(client.dbsize())
            if assigned and "assigned" not in marks:
                marks["assigned"] = time.perf_counter()
        if baseline >= 0 and client.dbsize() > baseline:
            marks["first_key"] = time.perf_counter()
            return marks
        if time.monotonic() > next_commit:
            _check_alive(workers)
            if any(r.committed for r in probe.read() if r.topic in probe.source_topics):
                marks["first_commit"] = time.perf_counter()
                return marks
            next_commit = time.monotonic() + 0.5
        time.sleep(0.005)
    msg = "the worker wrote nothing and committed nothing within 180 s"
    raise RuntimeError(msg)


def _wait_applied(settings: Settings, client: redis.Redis, ends: dict[int, int], workers: Sequence[WorkerProcess],
                  timeout_s: float) -> float:
    """Perf-counter time at which Redis holds every source record as applied: each partition's saved clock
    (:class:`~stream.watermarks.WatermarkStore`, written after the batch's feature writes) has its
    ``next_offset`` at the topic's end. Polled every 5 ms, so unlike the committed offsets (Faust commits
    every second) it marks when the last features became readable."""
    store = WatermarkStore(client, settings.worker.app_id, settings.kafka.events_topic,
                           settings.stats.allowed_lateness_ms)
    deadline, next_check = time.monotonic() + timeout_s, 0.0
    while time.monotonic() < deadline:
        if all(c.next_offset >= ends[p] for p, c in store.load(ends).items()):
            return time.perf_counter()
        if time.monotonic() > next_check:
            _check_alive(workers)
            next_check = time.monotonic() + 0.5
        time.sleep(0.005)
    msg = f"Redis had not applied every record after {timeout_s:.0f} s"
    raise RuntimeError(msg)


def _wait_caught_up(probe: LagProbe, workers: Sequence[WorkerProcess], timeout_s: float) -> None:
    """LagProbe's catch-up rule (source topics at their ends, twice in a row), with a bar."""
    rows = probe.read()
    targets = {(r.topic, r.partition): r.end for r in rows if r.topic in probe.source_topics}
    total, stable, deadline = sum(targets.values()), 0, time.monotonic() + timeout_s
    with tqdm(total=total, desc="worker (records)", unit="rec", **BAR) as bar:
        while stable < 2:
            stable = stable + 1 if caught_up(rows, targets) else 0
            done = sum(min(r.committed, targets[(r.topic, r.partition)]) for r in rows
                       if (r.topic, r.partition) in targets)
            bar.update(done - bar.n)
            if time.monotonic() > deadline:
                msg = f"not caught up after {timeout_s:.0f} s ({total - done} source records behind)"
                raise RuntimeError(msg)
            _check_alive(workers)
            time.sleep(0.2)
            rows = probe.read()


def bench_worker(base: Settings, topic: str, n: int, procs: int) -> dict[str, Any]:
    """``procs`` worker processes in one fresh group over the pre-filled ``topic``; Redis flushed first."""
    tag = f"bench-w{procs}-{uuid.uuid4().hex[:8]}"
    settings = _worker_settings(base, topic, tag)
    ensure_topics(settings)
    client = redis.Redis.from_url(settings.redis.effective_url)
    client.flushall()
    probe = LagProbe(settings)
    workers = []
    for i in range(procs):
        home = base.home / tag / str(i)
        home.mkdir(parents=True)
        workers.append(WorkerProcess(settings.model_copy(update={"home": home}),
                                     base.home / "logs" / f"{tag}-{i}.log", loglevel="warning"))
    with ExitStack() as stack:
        # Start them together (one join, no staggered rebalance). The pool's threads must outlive the
        # workers: a worker gets SIGTERM when the thread that started it exits (PR_SET_PDEATHSIG).
        pool = stack.enter_context(ThreadPoolExecutor(procs))
        for w in workers:
            stack.callback(w.stop)
        list(pool.map(WorkerProcess.start, workers))
        ends = {r.partition: r.end for r in probe.read() if r.topic == settings.kafka.events_topic}
        marks = _wait_start(settings, client, probe, workers)
        applied = _wait_applied(settings, client, ends, workers, timeout_s=120 + n / 500)
        _wait_caught_up(probe, workers, timeout_s=120 + n / 500)
        end = time.perf_counter()
    if "first_key" not in marks:
        msg = (f"the worker committed the topic but wrote no Redis key beyond its {marks.get('startup_keys')} "
               f"start-up key(s): events were dropped, not processed ({n / (end - marks['first_commit']):,.0f} "
               "events/s not counted)")
        raise RuntimeError(msg)
    dead = records_in(settings, settings.kafka.dlq_topic)
    elapsed = applied - marks["first_key"]
    result = {"eps": n / elapsed, "elapsed_s": elapsed, "start_signal": "first Redis key",
              "eps_committed": n / (end - marks["first_key"]),
              "eps_from_assignment": n / (applied - marks["assigned"]) if "assigned" in marks else None,
              "dead_letters": dead, "redis_keys": int(client.dbsize()), "startup_keys": marks.get("startup_keys")}
    warnings = [f"{dead} record(s) dead-lettered"] if dead else []
    if marks.get("startup_keys", 0) > 10:
        warnings.append(f"{marks['startup_keys']} keys already written when the group was seen: start mark late")
    if warnings:
        result["warning"] = "; ".join(warnings)
    return result
