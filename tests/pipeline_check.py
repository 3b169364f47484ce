"""The end-to-end check shared by the pipeline, chaos and scale-out tests and ``recstream bench chaos``: a
seeded event stream with duplicates, disorder and late events; the producers that put it on the topic; and
the assertions that every served feature and every sample equals the brute-force reference recomputed from
the raw events (tests/integration/reference.py, tests/join_reference.py)."""

from __future__ import annotations

import random
import uuid

from filters.events import ACTIONS, Event, ItemMeta, decode_record
from filters.sample_records import decode_samples
from infra.settings import Settings
from infra.topic_reader import TopicRecord, read_last
from serving.client import FeatureClient
from stream.producer import EventProducer
from tests.integration import reference
from tests.integration.reference import DAY, Ev
from tests.join_reference import JEv, Params, assert_same_samples, join_partition, record

AT = 1_767_225_600_000  # 2026-01-01T00:00:00Z: tile-aligned for every window
CATEGORIES = ["food", "travel", "tech", "pets"]


def private_pipeline(base: Settings, **worker: object) -> Settings:
    """``base`` with topics and a consumer group of its own (the caller creates the topics)."""
    suffix = uuid.uuid4().hex[:8]
    kafka = base.kafka.model_copy(update={
        "events_topic": f"ev-{suffix}", "items_topic": f"it-{suffix}", "dlq_topic": f"dlq-{suffix}",
        "samples_topic": f"sm-{suffix}",
    })
    fields = {"app_id": f"rs-{suffix}", "metrics_port": 0, "batch_size": 200, **worker}
    return base.model_copy(update={"kafka": kafka, "worker": base.worker.model_copy(update=fields)})


def make_stream(seed: int, n: int, users: int = 12, items: int = 60) -> tuple[list[Ev], dict[str, ItemMeta]]:
    """Events over the 3 days before AT, dense in the last hours, with ~5 % duplicates and late events."""
    rng = random.Random(seed)
    meta = {
        f"i{k}": ItemMeta(item_id=f"i{k}", category=rng.choice(CATEGORIES), author_id=f"a{k % 7}", publish_ts=0)
        for k in range(items)
    }
    base: list[Ev] = []
    copies: list[tuple[int, int, Ev]] = []  # (before which base event, order, event): the other delivery
    for k in range(n):
        user = f"u{rng.randrange(users)}"
        item = f"i{rng.randrange(items)}"
        back = rng.choice([rng.randrange(3 * DAY), rng.randrange(2 * 3_600_000), rng.randrange(600_000)])
        ts = AT - 1 - back
        etype = "impression" if rng.random() < 0.6 else rng.choice(ACTIONS)
        m = meta[item]
        base.append(Ev(f"e{seed}-{k}", etype, user, item, ts, m.category, m.author_id))
        if rng.random() < 0.05:  # a duplicate delivery, anywhere earlier: the original comes much later
            copies.append((rng.randrange(k + 1), k, base[-1]))
    copies.sort(key=lambda c: (c[0], c[1]))
    events: list[Ev] = []
    at = 0
    for k, ev in enumerate(base):  # one merge pass (a list insert per copy is quadratic at 1M events)
        while at < len(copies) and copies[at][0] == k:
            events.append(copies[at][2])
            at += 1
        events.append(ev)
    return events, meta


def to_event(ev: Ev, rng: random.Random) -> Event:
    """Events carry category/author only sometimes: the rest comes from item metadata."""
    keep = rng.random() < 0.7
    return Event(event_id=ev.event_id, type=ev.type, user_id=ev.user_id, item_id=ev.item_id,  # type: ignore[arg-type]
                 ts=ev.ts, category=ev.category if keep else None, author_id=ev.author_id if keep else None)


def single_event_records(settings: Settings) -> Settings:
    """The same settings with a producer that sends one event per record (the format of other producers)."""
    return settings.model_copy(update={"producer": settings.producer.model_copy(update={"batch_max_events": 1})})


def produce(settings: Settings, events: list[Ev], meta: dict[str, ItemMeta] | None = None) -> None:
    """A batching producer and a single-event one, interleaved at random on the same topic."""
    rng = random.Random(7)
    with EventProducer(settings) as batched, EventProducer(single_event_records(settings)) as single:
        for m in (meta or {}).values():
            batched.send_item(m)
        for ev in events:
            (batched if rng.random() < 0.7 else single).send(to_event(ev, rng))
            if rng.random() < 0.01:
                batched.flush(30)
        batched.flush(30)
        single.flush(30)


def topic_order(settings: Settings, events: list[Ev]) -> list[Ev]:
    """``events`` in the order the worker sees them: per partition, by (offset, index in the record).

    Two producers interleave on the topic, so only the topic itself knows the order of a user's events
    (the reference needs it for late flags and for which delivery of a duplicate is the first)."""
    by_id = {ev.event_id: ev for ev in events}
    ordered = sorted(read_all(settings, settings.kafka.events_topic), key=lambda m: (m.partition, m.offset))
    out = [by_id[ev.event_id] for m in ordered for _, ev in decode_record(m.value).events
           if ev.event_id in by_id]  # not a bad message the worker dead-letters (tests/fuzz_messages.py)
    assert sorted(e.event_id for e in out) == sorted(e.event_id for e in events)
    return out


def assert_features_match(settings: Settings, events: list[Ev]) -> None:
    parts = settings.kafka.partitions
    client = FeatureClient(settings.redis.effective_url, settings=settings)
    users = sorted({e.user_id for e in events})
    for action in ACTIONS:
        cap = settings.lastn.capacity[action]
        expected = reference.sequences(events, parts, action, cap)
        for user in users:
            got = client.last_n(user, action, n=cap)
            want = expected.get(user, [])
            assert [(g.item_id, g.ts) for g in got] == [(w.item_id, w.ts) for w in want], (
                user, action, "missing", sorted({w.event_id for w in want} - {g.event_id for g in got}),
                "extra", sorted({g.event_id for g in got} - {w.event_id for w in want}))
            for category in CATEGORIES:
                got_c = client.last_n(user, action, n=cap, category=category)
                assert [g.item_id for g in got_c] == [w.item_id for w in want if w.category == category], (
                    user, action, category, [(g.event_id, g.category) for g in got_c],
                    [(w.event_id, w.category) for w in want if w.category == category])
    want_counts = reference.counts(events, parts, settings.stats.allowed_lateness_ms, AT)
    entities: dict[str, set[object]] = {
        "user": set(users), "item": {e.item_id for e in events}, "author": {e.author_id for e in events},
        "user_category": {(e.user_id, e.category) for e in events},
    }
    for kind, ids in entities.items():
        for entity in ids:
            served = client.stats(kind, entity, at=AT)  # type: ignore[arg-type]
            for window in reference.WINDOW_MS:
                for etype in ("impression", *ACTIONS):
                    count = want_counts.get((kind, entity, window, etype), 0)
                    assert served[window][etype] == count, (kind, entity, window, etype)
    impressed: dict[str, set[str]] = {}
    for e in events:
        if e.type == "impression":
            impressed.setdefault(e.user_id, set()).add(e.item_id)
    for user in users:
        assert all(client.seen(user, sorted(impressed.get(user, ())), at=AT)), user


def reference_samples(settings: Settings, events: list[Ev]) -> dict[str, dict[str, object]]:
    """The brute-force join of ``events`` (in topic order): sample id -> record."""
    per_partition: dict[int, list[JEv]] = {}
    for ev in events:
        per_partition.setdefault(reference.partition_of(ev.user_id, settings.kafka.partitions), []).append(
            JEv(ev.event_id, ev.type, ev.user_id, ev.item_id, ev.ts, category=ev.category, author_id=ev.author_id))
    j = settings.join
    params = Params(dict(j.windows_ms), settings.stats.allowed_lateness_ms, j.history,
                    settings.lastn.capacity["click"], j.alpha, j.idle_user_ms)
    want: dict[str, dict[str, object]] = {}
    for evs in per_partition.values():
        want.update(join_partition(evs, params))
    return want


def distinct_positives(settings: Settings, events: list[Ev]) -> int:
    """How many distinct positive samples the reference join gives: what the trainer must train, once each."""
    return sum(v["kind"] == "positive" for v in reference_samples(settings, events).values())


def assert_samples_match(settings: Settings, events: list[Ev]) -> int:
    """The distinct samples on the samples topic equal the brute-force join; returns the duplicates."""
    want = reference_samples(settings, events)
    records = [s for m in read_all(settings, settings.kafka.samples_topic) for s in decode_samples(m.value)]
    got: dict[str, dict[str, object]] = {}
    for s in records:
        first, again = got.setdefault(s.sample_id, record(s)), record(s)
        assert first == again, {f: (first[f], again[f]) for f in first if first[f] != again[f]}
    assert_same_samples(got, want)
    assert sum(v["kind"] == "positive" for v in want.values()) > 20
    return len(records) - len(got)


def read_all(settings: Settings, topic: str) -> list[TopicRecord]:
    """Every record of ``topic`` up to its end offsets as the read starts (no consumer group)."""
    return read_last(settings, topic, 10**12)


def assert_state_matches(settings: Settings, events: list[Ev]) -> tuple[list[Ev], int]:
    """Every feature and every distinct sample equals the reference of ``events``: the events in topic order
    (for further checks) and how many samples were re-emitted (duplicates on the topic)."""
    ordered = topic_order(settings, events)
    assert_features_match(settings, ordered)
    return ordered, assert_samples_match(settings, ordered)
