"""The label join inside the ingest stage, on the real Redis: the samples of a random stream equal the
brute-force reference, through crashes between a batch's writes and its commit, restarts that lose the
join's memory, and a rewind. The sample sink is a list (our own interface); the worker-process test with
the real broker is in test_pipeline.py.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence

import pytest
import redis
from prometheus_client import REGISTRY

from filters.events import Event, encode_batch
from filters.labels import Sample
from infra.settings import Settings
from stream.batching import KeyPartitioner
from stream.ingest import IngestStage, Record
from tests.join_reference import JEv, M, Params, assert_same_samples, join_partition, random_stream, record

pytestmark = pytest.mark.integration

WINDOWS = {"click": 10 * M, "like": 30 * M, "collect": 30 * M, "share": 20 * M, "comment": 30 * M}
LATENESS = 5 * M
T0 = 1_700_006_400_000


class ListSink:
    """Samples "delivered" as soon as they are sent (the worst case for duplicates after a crash)."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def send(self, samples: Sequence[Sample]) -> None:
        self.samples += samples

    def flush(self) -> None:
        pass


@pytest.fixture
def settings(redis_service: object) -> Settings:
    base: Settings = redis_service.settings  # type: ignore[attr-defined]
    return base.model_copy(update={
        "join": base.join.model_copy(update={"windows_ms": WINDOWS, "history": 4, "idle_user_ms": 120 * M,
                                             "alpha": 0.5}),
        "lastn": base.lastn.model_copy(update={"capacity": {**base.lastn.capacity, "click": 6}}),
        "stats": base.stats.model_copy(update={"allowed_lateness_ms": LATENESS}),
        "worker": base.worker.model_copy(update={"write_chunk_events": 7}),  # many pipelines per batch
    })


@pytest.fixture
def r(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    yield redis_client


def to_event(ev: JEv) -> Event:
    return Event(event_id=ev.event_id, type=ev.type, user_id=ev.user_id, item_id=ev.item_id,  # type: ignore[arg-type]
                 ts=ev.ts, request_id=ev.request_id, position=ev.position, category=ev.category,
                 author_id=ev.author_id)


def records_of(events: list[JEv], partitions: int, rng: random.Random) -> tuple[list[Record], dict[int, list[JEv]]]:
    """Batched records of random sizes per partition, the partitions interleaved; each partition's order."""
    place = KeyPartitioner(partitions)
    order: dict[int, list[JEv]] = {}
    for ev in events:
        order.setdefault(place(ev.user_id), []).append(ev)
    by_p: dict[int, list[Record]] = {}
    for p, evs in order.items():
        recs: list[Record] = []
        k = 0
        while k < len(evs):
            chunk = evs[k : k + rng.randrange(1, 25)]
            value = encode_batch([to_event(e) for e in chunk])
            recs.append(Record("ev", p, len(recs), chunk[0].user_id.encode(), value))
            k += len(chunk)
        by_p[p] = recs
    mixed: list[Record] = []
    while any(by_p.values()):
        mixed.append(by_p[rng.choice([p for p, q in by_p.items() if q])].pop(0))
    return mixed, order


def reference(order: dict[int, list[JEv]], settings: Settings) -> dict[str, dict[str, object]]:
    params = Params(WINDOWS, LATENESS, history=4, capacity=6, alpha=settings.join.alpha, idle=120 * M)
    out: dict[str, dict[str, object]] = {}
    for evs in order.values():
        out.update(join_partition(evs, params))
    return out


class Killed(Exception):
    pass


def crash(*_: object) -> None:
    raise Killed


def die_after(stage: IngestStage, calls: int) -> None:
    """Make the stage's writers raise Killed after ``calls`` more pipelines (a SIGKILL mid-batch)."""
    left = [calls]
    for writer in (stage._users, stage._entities):
        send = writer.send

        def dying(prepared: object, send: object = send) -> object:
            if left[0] == 0:
                raise Killed
            left[0] -= 1
            return send(prepared)  # type: ignore[operator]

        writer.send = dying  # type: ignore[method-assign]


def stream(seed: int) -> list[JEv]:
    """The random stream plus clicks two days old (beyond the 1-day dedup horizon: a replay cannot tell
    them from duplicates, yet they belong in later histories)."""
    rng = random.Random(seed)
    events = random_stream(seed, n=1500, users=24, t0=T0)
    for k in range(40):
        old = JEv(f"old{k}", "click", f"u{rng.randrange(24)}", f"i{rng.randrange(6)}", T0 - 2 * 1440 * M - k)
        events.insert(rng.randrange(len(events)), old)
    return events


def test_samples_equal_the_reference(r: redis.Redis, settings: Settings) -> None:
    rng = random.Random(3)
    records, order = records_of(stream(3), settings.kafka.partitions, rng)
    sink = ListSink()
    stage = IngestStage(r, settings, samples=sink)
    at = 0
    while at < len(records):
        n = rng.randrange(1, 30)
        stage.process(records[at : at + n]).commit()
        at += n
    got = {s.sample_id: record(s) for s in sink.samples}
    assert len(got) == len(sink.samples), "no duplicates without a crash"
    want = reference(order, settings)
    assert_same_samples(got, want)
    kinds = Counter(v["kind"] for v in want.values())
    assert kinds["positive"] > 20 and kinds["impression"] > 50, kinds


@pytest.mark.parametrize("seed", list(range(5, 25)))
def test_crashes_restarts_and_a_rewind_keep_the_distinct_samples_exact(r: redis.Redis, settings: Settings,
                                                                       seed: int) -> None:
    rng = random.Random(seed)
    records, order = records_of(stream(seed), settings.kafka.partitions, rng)
    sink = ListSink()
    stage = IngestStage(r, settings, samples=sink)
    committed = at = crashes = 0
    while at < len(records):
        n = rng.randrange(1, 8)
        if rng.random() < 0.15:  # killed in the middle of the batch's Redis pipelines
            die_after(stage, rng.randrange(0, 6))
            try:
                stage.process(records[at : at + n])
            except Killed:
                crashes += 1
            stage = IngestStage(r, settings, samples=sink)
            at = committed
            continue
        out = stage.process(records[at : at + n])
        at += n
        roll = rng.random()
        if roll < 0.3:
            if roll < 0.15:  # killed after the join checkpoint, before the clocks: the checkpoint is ahead
                stage._clocks.save = crash  # type: ignore[method-assign]
                with pytest.raises(Killed):
                    out.commit()
            crashes += 1  # otherwise killed before the commit; a new process replays from the commit point
            stage = IngestStage(r, settings, samples=sink)
            at = committed
        else:
            out.commit()
            committed = at
    # the whole topic again (a consumer-group rewind), with a new process
    stage = IngestStage(r, settings, samples=sink)
    for k in range(0, len(records), 40):
        stage.process(records[k : k + 40]).commit()
    got: dict[str, dict[str, object]] = {}
    for s in sink.samples:
        assert got.setdefault(s.sample_id, record(s)) == record(s), "a re-emitted sample differs"
    assert_same_samples(got, reference(order, settings))
    duplicates = len(sink.samples) - len(got)
    assert crashes > 5 and duplicates > 0, (crashes, duplicates)


def test_idle_flush_closes_the_windows_of_a_quiet_partition(r: redis.Redis, settings: Settings) -> None:
    now = [T0]
    live = settings.model_copy(update={"join": settings.join.model_copy(update={"idle_flush_s": 5.0, "alpha": 1.0})})
    sink = ListSink()
    stage = IngestStage(r, live, clock=lambda: now[0], samples=sink)
    events = [JEv("e1", "impression", "u1", "i1", T0 - 1000, "r1", 0), JEv("e2", "click", "u1", "i1", T0 - 500, "r1"),
              JEv("e3", "impression", "u1", "i2", T0 - 900, "r1", 1)]
    records, _ = records_of(events, live.kafka.partitions, random.Random(1))
    stage.process(records).commit()
    assert [s.kind for s in sink.samples] == ["positive"]  # the windows are open: event time has not moved
    now[0] += 4_000
    assert stage.flush_idle() is None  # not idle long enough
    now[0] += 2_000
    commit = stage.flush_idle()
    assert commit is not None
    commit()
    labels = {s.item_id: (s.labels or {}).get("click") for s in sink.samples if s.kind == "impression"}
    assert labels == {"i1": 1, "i2": 0}
    assert stage.flush_idle() is None  # nothing open any more
    # the checkpoint holds the flush: a restarted worker has nothing open either
    again = IngestStage(r, live, clock=lambda: now[0] + 60_000, samples=sink)
    again.process(records).commit()  # every record is inside the persisted clock
    assert again.flush_idle() is None and len(sink.samples) == 3
    # off by default: windows close on event time only
    off = IngestStage(r, settings, clock=lambda: now[0] + 10**9, samples=sink)
    assert off.flush_idle() is None


def refused(state: str) -> float:
    return REGISTRY.get_sample_value("recstream_stale_writes_refused_total", {"state": state}) or 0.0


@pytest.mark.parametrize("seed", [41, 42, 43, 44])
def test_a_worker_that_lost_its_partitions_cannot_put_older_state_back(r: redis.Redis, settings: Settings,
                                                                       seed: int) -> None:
    """A rebalance while a batch's commit is pending: the new owner reads from the last commit, goes on and
    commits, then the old owner commits late. Its older clock and join states must not overwrite the new
    ones (the samples a later owner derives would lose clicks from their histories)."""
    rng = random.Random(seed)
    records, order = records_of(stream(seed), settings.kafka.partitions, rng)
    sink = ListSink()
    owner = IngestStage(r, settings, samples=sink)
    before = refused("clock"), refused("join")
    at = handovers = 0
    while at < len(records):
        n = rng.randrange(1, 8)
        pending = owner.process(records[at : at + n])
        if rng.random() < 0.3:
            owner, m = IngestStage(r, settings, samples=sink), n + rng.randrange(1, 8)
            owner.process(records[at : at + m]).commit()
            pending.commit()  # the old owner, late
            at, handovers = at + m, handovers + 1
        else:
            pending.commit()
            at += n
    got: dict[str, dict[str, object]] = {}
    for s in sink.samples:
        assert got.setdefault(s.sample_id, record(s)) == record(s), "a re-emitted sample differs"
    assert_same_samples(got, reference(order, settings))
    assert handovers > 5 and refused("clock") > before[0] and refused("join") > before[1]
