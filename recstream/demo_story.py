"""The demo's learning story, told with the product's own reads and models.

1. **Before / after** (:func:`plan_story`, :func:`finish_story`): one user's top-10
   (:meth:`serving.client.FeatureClient.recommend`, what ``GET /v1/users/{id}/recommendations`` serves)
   before and after that user is shown and clicks a few items of a category they never clicked; AFTER is
   read once the trainer's manifest says it has published past the last click and the exposure filter
   holds every shown item. The demo sends the clicks amid the live traffic: the trainer learns from
   in-batch negatives, and a batch holding only one user's clicks of one category has none from other
   categories, so it would teach the user's embedding almost nothing.
2. **Online vs frozen** (:func:`online_vs_frozen`): the live phase's samples (read back from the samples
   topic), tested prequentially by two copies of the model as it was published at the start of the live
   phase: ``frozen`` (never trained) and ``online`` (trained as the trainer trains: the ID embeddings,
   incrementally, one catalogue refresh per ``learning.publish_every_s`` of event time).

The choices (:func:`pick_category`, :func:`story_events`, :meth:`Story.verdict`) are pure.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from filters.events import Event
from filters.labels import Sample
from filters.manifest import Manifest
from filters.model_store import ModelStore
from filters.sample_records import decode_samples
from infra.kafka_log import client_config
from infra.settings import Settings
from online_learning.checkpoint import load_checkpoint, save_checkpoint
from online_learning.evaluation import auc, recall_at, reciprocal_rank
from online_learning.learner import Learner
from online_learning.versions import resume
from serving.client import FeatureClient
from serving.model import ModelReader

__all__ = ["REGIMES", "TOP_K", "WITHOUT_STORY", "Curves", "Story", "StoryPlan", "finish_story", "learner_ranking",
           "online_vs_frozen", "pick_category", "plan_story", "read_samples", "snapshot_model", "story_events",
           "with_replica"]

TOP_K = 10
REGIMES = ("frozen", "online")
WITHOUT_STORY = "without story"  # the online copy trained on every live positive but the story user's


@dataclass(frozen=True)
class Story:
    """One user's top-k before and after clicking ``clicked`` (items of ``category``)."""

    user: str
    category: str
    clicks_before: int  # the user's clicks on ``category`` in the replayed data (0: never clicked)
    clicked: tuple[str, ...]
    before: tuple[tuple[str, float], ...]
    after: tuple[tuple[str, float], ...]
    categories: Mapping[str, str]  # item id -> category, for every item shown
    waited_s: float
    published: bool  # the clicks were published and filtered before the timeout
    lr: float
    # the user's unseen items ranked by the trainer's recipe replayed on the live samples, with and without
    # the story's clicks
    replica: tuple[str, ...] = ()
    control: tuple[str, ...] = ()

    def in_category(self, ranked: Sequence[tuple[str, float]] | Sequence[str]) -> int:
        """How many of the first :data:`TOP_K` of ``ranked`` (ids, or (id, score) pairs) are of :attr:`category`."""
        ids = [r if isinstance(r, str) else r[0] for r in ranked[:TOP_K]]
        return sum(self.categories.get(i) == self.category for i in ids)

    def best_rank(self, ranking: Sequence[str]) -> int | None:
        """1-based rank of the first :attr:`category` item of ``ranking`` (None: there is none)."""
        return next((k + 1 for k, i in enumerate(ranking) if self.categories.get(i) == self.category), None)

    @property
    def changed(self) -> bool:
        return [i for i, _ in self.before] != [i for i, _ in self.after]

    @property
    def leaked(self) -> list[str]:
        """Clicked (hence shown) items still recommended after: the exposure filter failed on them."""
        return [i for i, _ in self.after if i in self.clicked]

    def verdict(self) -> str:
        """One honest sentence on what the AFTER list shows (and, with a replica, what the clicks caused).

        >>> s = Story("u1", "pets", 0, ("i1",), (("i2", 1.0),), (("i3", 1.0),), {"i3": "pets"}, 3.0, True, 0.05)
        >>> s.verdict()
        'learning visible: 1/1 of the new top-1 are pets items (before: 0/1)'
        """
        before, after = self.in_category(self.before), self.in_category(self.after)
        k, kb = len(self.after), len(self.before)
        if not self.published:
            return (f"not published in time: after {self.waited_s:.0f} s the trainer had not published the "
                    "clicks (or the exposure filter lacked them); AFTER shows an older model")
        if after > before:
            head = f"learning visible: {after}/{k} of the new top-{k} are {self.category} items (before: {before}/{kb})"
        else:
            head = (f"weak effect: {after}/{k} {self.category} items after vs {before}/{kb} before — "
                    f"{len(self.clicked)} clicks moved this user's ranking too little towards it at "
                    f"learning.lr={self.lr:g}")
        if not self.replica:
            return head
        return (f"{head}; the trainer's recipe replayed on the same live samples: {self.in_category(self.replica)}"
                f"/{TOP_K} with the clicks (best {self.category} item at #{self.best_rank(self.replica)}), "
                f"{self.in_category(self.control)}/{TOP_K} without them (#{self.best_rank(self.control)})")


def pick_category(clicked: Mapping[str, int], catalogue: Mapping[str, str]) -> str:
    """The category the user clicked least (never, if any), ties broken by the most catalogue items.

    >>> pick_category({"food": 3, "pets": 0}, {"i1": "food", "i2": "pets", "i3": "tech", "i4": "tech"})
    'tech'
    """
    items = Counter(catalogue.values())
    return min(items, key=lambda c: (clicked.get(c, 0), -items[c], c))


def story_events(user: str, items: Sequence[str], category: str, now_ms: int) -> list[Event]:
    """An impression then a click (800 ms later) of ``user`` on each of ``items``, one request.

    >>> [(e.type, e.item_id, e.ts) for e in story_events("u1", ["i1"], "pets", 1000)]
    [('impression', 'i1', 1000), ('click', 'i1', 1800)]
    """
    request = f"demo-story-{now_ms}"
    out: list[Event] = []
    for pos, item in enumerate(items):
        for etype, ts in (("impression", now_ms), ("click", now_ms + 800)):
            out.append(Event(event_id=f"{request}:{pos}:{etype}", type=etype,  # type: ignore[arg-type]
                             user_id=user, item_id=item, ts=ts, request_id=request, position=pos, category=category))
    return out


def _top(settings: Settings, user: str) -> tuple[tuple[str, float], ...]:
    """The user's top-k as serving answers it now (a new client: a freshly built index)."""
    client = FeatureClient(settings.redis.effective_url, settings=settings)
    try:
        return tuple(client.recommend(user, TOP_K).items)
    finally:
        client.close()


def _current_manifest(settings: Settings, client: FeatureClient, timeout_s: float,
                      ready: Callable[[Manifest], bool]) -> Manifest | None:
    """Poll the current version's manifest until ``ready`` holds for it (None after ``timeout_s``)."""
    store = ModelStore(client.redis, settings.redis.shards)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        version = store.current()
        manifest = store.manifest(version) if version is not None else None
        if manifest is not None and ready(manifest):
            return manifest
        time.sleep(0.25)
    return None


def _wait_published(settings: Settings, client: FeatureClient, user: str, items: Sequence[str], last_ts: int,
                    timeout_s: float) -> bool:
    """Until the current version's manifest has trained past ``last_ts`` and no item reads as unseen."""
    return _current_manifest(settings, client, timeout_s, lambda m: m.newest_event_ms >= last_ts
                             and not client.filter_unseen(user, items)) is not None


def wait_first_publish(settings: Settings, client: FeatureClient, timeout_s: float) -> int:
    """Until the current version has a publish of trained positives (a top-k needs published item
    vectors); returns the positives trained into it, 0 after ``timeout_s``."""
    manifest = _current_manifest(settings, client, timeout_s, lambda m: m.publishes > 0 and m.samples_seen > 0)
    return 0 if manifest is None else manifest.samples_seen


@dataclass
class StoryPlan:
    """The story before its clicks: the user's top-k, the category and items it will be shown and click."""

    user: str
    category: str
    clicks_before: int
    items: list[str]
    before: tuple[tuple[str, float], ...]
    catalogue: Mapping[str, str]
    events: list[Event] = field(default_factory=list)
    produced_at: float = 0.0  # time.monotonic() when :meth:`produce` ran

    def produce(self, now_ms: int) -> list[Event]:
        """The story's events stamped ``now_ms`` (remembered, for :func:`finish_story`)."""
        self.events = story_events(self.user, self.items, self.category, now_ms)
        self.produced_at = time.monotonic()
        return self.events


def plan_story(settings: Settings, user: str, catalogue: Mapping[str, str], clicked: Mapping[str, int],
               popularity: Counter[str], n_items: int = 12) -> StoryPlan:
    """Top-k now; the :func:`pick_category` category and its ``n_items`` most shown items the user has not
    been shown and that are not in that top-k (so that filtering them cannot lower the AFTER count)."""
    category = pick_category(clicked, catalogue)
    before = _top(settings, user)
    listed = {i for i, _ in before}
    pool = [i for i, _ in popularity.most_common() if catalogue.get(i) == category and i not in listed]
    client = FeatureClient(settings.redis.effective_url, settings=settings)
    try:
        items = client.filter_unseen(user, pool)[:n_items]
    finally:
        client.close()
    return StoryPlan(user, category, clicked.get(category, 0), items, before, catalogue)


def finish_story(settings: Settings, plan: StoryPlan, timeout_s: float = 60.0) -> Story:
    """Wait until the plan's clicks are published and filtered (at most ``timeout_s``), then top-k again."""
    client = FeatureClient(settings.redis.effective_url, settings=settings)
    try:
        last_ts = max((e.ts for e in plan.events), default=0)
        published = bool(plan.events) and _wait_published(settings, client, plan.user, plan.items, last_ts,
                                                           timeout_s)
    finally:
        client.close()
    after = _top(settings, plan.user)
    shown = {i for i, _ in (*plan.before, *after)} | set(plan.items)
    return Story(plan.user, plan.category, plan.clicks_before, tuple(plan.items), plan.before, after,
                 {i: plan.catalogue.get(i, "?") for i in shown}, time.monotonic() - plan.produced_at, published,
                 settings.learning.lr)


def with_replica(settings: Settings, story: Story, learners: Mapping[str, Learner],
                 catalogue: Mapping[str, str]) -> Story:
    """``story`` with the top-k of the trainer's recipe replayed with (``online``) and without
    (:data:`WITHOUT_STORY`) the story's clicks, over the same unseen candidates: what the clicks caused."""
    client = FeatureClient(settings.redis.effective_url, settings=settings)
    try:
        history = [e.item_id for e in client.last_n(story.user, "click", n=settings.join.history)]
        candidates = client.filter_unseen(story.user, learners["online"].catalogue_ids)
    finally:
        client.close()
    replica = learner_ranking(learners["online"], story.user, history, candidates)
    control = learner_ranking(learners[WITHOUT_STORY], story.user, [h for h in history if h not in story.clicked],
                              candidates)
    categories = {**story.categories, **{i: catalogue.get(i, "?") for i in candidates}}
    return dataclasses.replace(story, replica=tuple(replica), control=tuple(control), categories=categories)


# --- online vs frozen over the live phase ---------------------------------------------------------
@dataclass
class Curves:
    """Per live positive (event-time order): seconds since the live start and, per regime, the recall@k hit
    and reciprocal rank; per regime the AUC of the live impression samples (None: none, or one class)."""

    seconds: np.ndarray
    hits: dict[str, np.ndarray]
    rr: dict[str, np.ndarray]
    auc: dict[str, float | None] = field(default_factory=dict)
    impressions: int = 0

    def mean(self, series: str, regime: str) -> float | None:
        values = getattr(self, series)[regime]
        return float(values.mean()) if len(values) else None


def snapshot_model(settings: Settings, client: FeatureClient, path: Path,
                   catalogue: Mapping[str, str]) -> str:
    """Save the current version as the trainer would resume it (checkpoint + published rows) to ``path``;
    items published since the checkpoint get their category from ``catalogue``. Returns the version."""
    store = ModelStore(client.redis, settings.redis.shards)
    version = ModelReader.require(store.current())
    learner, _ = resume(settings, store, version)
    for item, _ in learner.tables.items.items():
        learner.item_category.setdefault(item, catalogue.get(item, ""))
    save_checkpoint(path, learner, {"version": version})
    return version


def read_samples(settings: Settings, since_ms: int, timeout_s: float = 30.0) -> list[Sample]:
    """The samples of event time ``since_ms`` or later (a positive's click, an impression's impression), from
    the samples topic's records written since then up to its current end, without canary heartbeats or
    repeated sample ids, in event-time order."""
    topic = settings.kafka.samples_topic
    consumer = Consumer({**client_config(settings.kafka, "demo"), "group.id": "recstream-demo-eval",
                         "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        starts = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in parts], timeout=10)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        todo = {tp.partition: tp.offset for tp in starts if 0 <= tp.offset < ends[tp.partition]}
        consumer.assign([TopicPartition(topic, p, o) for p, o in todo.items()])
        seen: dict[str, Sample] = {}
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            for m in consumer.consume(5000, timeout=0.5):
                value, partition, offset = m.value(), int(m.partition() or 0), int(m.offset() or 0)
                if m.error() is not None or value is None:
                    continue
                for s in decode_samples(value):
                    if s.kind != "canary" and _event_ms(s) >= since_ms:
                        seen.setdefault(s.sample_id, s)
                if offset + 1 >= ends[partition]:
                    todo.pop(partition, None)
    finally:
        consumer.close()
    return sorted(seen.values(), key=_event_ms)


def _event_ms(s: Sample) -> int:
    """When a sample happened: a positive's click ``ts``, an impression's ``impression_ts``."""
    return s.ts if s.kind == "positive" else s.impression_ts


def _slices(samples: Iterable[Sample], every_ms: int) -> Iterable[list[Sample]]:
    """Consecutive runs of samples within one ``every_ms`` step of event time (one publish each)."""
    run: list[Sample] = []
    bucket = None
    for s in samples:
        b = _event_ms(s) // every_ms
        if run and b != bucket:
            yield run
            run = []
        bucket = b
        run.append(s)
    if run:
        yield run


def _train(learner: Learner, positives: Sequence[Sample], batch: int) -> None:
    """Train on ``positives`` in batches of ``batch``, then refresh the catalogue (one publish)."""
    for start in range(0, len(positives), batch):
        learner.train(positives[start:start + batch])
    learner.refresh_catalogue()


def online_vs_frozen(settings: Settings, checkpoint: Path, samples: Sequence[Sample], since_ms: int,
                     story_user: str) -> tuple[Curves, dict[str, Learner]]:
    """Test both regimes on every slice of ``samples``, then train ``online`` on its positives; also train a
    ``without story`` copy on the same positives but ``story_user``'s. Returns the curves and the two
    trained copies (``online``, ``without story``)."""
    cfg = settings.learning
    learners = {r: load_checkpoint(checkpoint, cfg)[0] for r in (*REGIMES, WITHOUT_STORY)}
    for learner in learners.values():
        learner.refresh_catalogue()
    hits: dict[str, list[np.ndarray]] = {r: [] for r in REGIMES}
    rr: dict[str, list[np.ndarray]] = {r: [] for r in REGIMES}
    scores: dict[str, list[np.ndarray]] = {r: [] for r in REGIMES}
    seconds, labels = [], []
    for chunk in _slices(samples, int(cfg.publish_every_s * 1000)):
        positives = [s for s in chunk if s.kind == "positive"]
        impressions = [s for s in chunk if s.kind == "impression"]
        seconds += [(s.ts - since_ms) / 1000 for s in positives]
        labels += [(s.labels or {}).get("click", 0) for s in impressions]
        for regime in REGIMES:
            learner = learners[regime]
            n = len(learner.catalogue_ids)
            ranks = learner.rank_positives(positives)
            hits[regime].append(recall_at(ranks, TOP_K, n_items=n))
            rr[regime].append(reciprocal_rank(ranks, n_items=n))
            scores[regime].append(learner.score_impressions(impressions).astype(np.float64))
        _train(learners["online"], positives, cfg.batch_size)
        _train(learners[WITHOUT_STORY], [s for s in positives if s.user_id != story_user], cfg.batch_size)
    y = np.asarray(labels, np.float64)
    areas = {r: auc(np.concatenate(scores[r]), y) if y.size else float("nan") for r in REGIMES}
    curves = Curves(np.asarray(seconds, np.float64), {r: np.concatenate(hits[r] or [np.zeros(0)]) for r in REGIMES},
                    {r: np.concatenate(rr[r] or [np.zeros(0)]) for r in REGIMES},
                    {r: None if np.isnan(a) else float(a) for r, a in areas.items()}, int(y.size))
    return curves, {k: learners[k] for k in ("online", WITHOUT_STORY)}


def learner_ranking(learner: Learner, user: str, history: Sequence[str], candidates: Sequence[str]) -> list[str]:
    """``candidates`` best first for ``user`` with click ``history`` (newest first) by ``learner``'s scores
    (the cosine / temperature serving computes from the published rows)."""
    probes = [Sample(kind="impression", sample_id="", user_id=user, item_id=i, request_id=None, impression_ts=0,
                     ts=0, category=learner.item_category.get(i, ""), author_id=None, history=list(history),
                     alpha=1.0) for i in candidates]
    order = np.argsort(-learner.score_impressions(probes), kind="stable")
    return [candidates[j] for j in order.tolist()]
