"""The label join, pure: impressions meet their actions in event time and become training samples.

One :class:`PartitionJoin` holds the open state of one source partition of the user-keyed events topic
(a user's impressions and actions share a partition, in order). Feed it the first deliveries of a batch
in partition order with :meth:`PartitionJoin.add`, then :meth:`PartitionJoin.close` at the batch's
watermark; both append to a :class:`JoinOutput`. The rules (docs/samples.md):

- an action matches the open impression with the same ``(user_id, item_id, request_id)``; an action
  without ``request_id`` matches the newest open impression of that ``(user_id, item_id)``; either way
  only if ``impression.ts <= action.ts <= impression.ts + window[action]``;
- an action that arrives before its impression waits, and the first impression that arrives and matches
  it claims it; it is dropped (``no_impression``) when the watermark reaches the deadline of the oldest
  impression it could match, and ``late`` when it arrives after that;
- an impression's window closes when the partition watermark reaches ``ts + max(window)``: actions
  after that are late for it, and its ``impression`` sample goes out (click-free ones kept with
  probability ``alpha``, decided by a stable hash of the sample id); a click emits a ``positive`` sample
  at once (one per impression);
- ``history`` is the user's clicks delivered earlier in partition order, the newest ``click_capacity``
  kept (as in the click sequence), those with ``ts < impression.ts``, newest first, at most ``history``;
- a freshness canary's click (:data:`filters.events.CANARY_PREFIX`) joins nothing: it passes through as
  one ``canary`` record (a heartbeat that training skips), and its ts moves the watermark like any event.

Everything depends on partition order and event time only, so a replay re-derives the same samples.

>>> cfg = JoinConfig({"click": 10, "like": 20, "collect": 20, "share": 20, "comment": 20})
>>> join, out = PartitionJoin(cfg), JoinOutput()
>>> imp = Arrival(Event(event_id="e1", type="impression", user_id="u", item_id="i", ts=100), watermark=0)
>>> clk = Arrival(Event(event_id="e2", type="click", user_id="u", item_id="i", ts=105), watermark=0)
>>> join.add([imp, clk], out)
>>> [(s.kind, s.item_id, s.ts) for s in out.samples]
[('positive', 'i', 105)]
>>> join.close(watermark=120, out=out)
>>> out.samples[-1].labels
{'click': 1, 'like': 0, 'collect': 0, 'share': 0, 'comment': 0}
"""

from __future__ import annotations

import bisect
import functools
import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import mmh3
import msgspec

from filters.deadlines import DeadlineQueue
from filters.events import ACTIONS, CANARY_PREFIX, Event
from infra.settings import Settings

__all__ = ["Arrival", "JoinConfig", "JoinOutput", "PartitionJoin", "Sample", "UserJoin", "calibrate",
           "canary_record", "keeps", "sample_id"]

SAMPLE_ID_VERSION = 1
_SEED = 0x5A3D1E  # fixed: sample ids and the downsampling decision are stable across processes and versions
_BITS = {a: 1 << i for i, a in enumerate(ACTIONS)}
# the labels record of every bit mask, built once (samples share these dicts: never mutate one)
_LABELS = [{a: int(bool(mask & bit)) for a, bit in _BITS.items()} for mask in range(1 << len(ACTIONS))]
# the metric labels of an impression sample per bit mask: its actions, or "none"
_LABEL_NAMES = [tuple(a for a, bit in _BITS.items() if mask & bit) or ("none",) for mask in range(1 << len(ACTIONS))]
_IMPRESSION_COUNTS = [tuple(("samples", "impression", name) for name in names) for names in _LABEL_NAMES]
_CLICK = _BITS["click"]


def sample_id(kind: str, impression_event_id: str) -> str:
    """The deterministic id of a sample: versioned, from its kind and its impression's ``event_id``.

    >>> sample_id("positive", "e1") == sample_id("positive", "e1") != sample_id("impression", "e1")
    True
    >>> sample_id("impression", "e1")[:3]
    's1-'
    """
    h = mmh3.hash128(f"{kind}\0{impression_event_id}", _SEED, signed=False)
    return f"s{SAMPLE_ID_VERSION}-{h:032x}"


def canary_record(ev: Event) -> Sample:
    """The ``canary`` record a canary click passes through as (``recstream canary`` reads it back).

    >>> canary_record(Event(event_id="c1", type="click", user_id="__canary__.0.0", item_id="x", ts=5)).kind
    'canary'
    """
    return Sample(kind="canary", sample_id=sample_id("canary", ev.event_id), user_id=ev.user_id,
                  item_id=ev.item_id, request_id=ev.request_id, impression_ts=ev.ts, ts=ev.ts, category=None,
                  author_id=None, history=[], alpha=1.0)


def keeps(sid: str, alpha: float) -> bool:
    """Whether a click-free impression sample is kept at downsampling rate ``alpha`` (stable hash).

    >>> keeps("s1-x", 1.0), sum(keeps(f"s1-{k}", 0.25) for k in range(10_000)) // 100
    (True, 25)
    """
    if alpha >= 1.0:
        return True
    return mmh3.hash64(sid, _SEED, signed=False)[0] < alpha * 2.0**64


def calibrate(p: float, alpha: float) -> float:
    """A model trained with negatives kept at rate ``alpha`` predicts ``p``; the true rate is
    ``alpha * p / ((1 - p) + alpha * p)`` (works elementwise on numpy arrays too).

    >>> round(calibrate(0.5, 0.1), 4), calibrate(0.3, 1.0)
    (0.0909, 0.3)
    """
    return alpha * p / ((1 - p) + alpha * p)


@dataclass(frozen=True)
class JoinConfig:
    """Attribution windows per action (ms of event time), history length, click-log size, ``alpha``."""

    windows_ms: Mapping[str, int]
    history: int = 50
    click_capacity: int = 200
    alpha: float = 1.0
    idle_user_ms: int = 30 * 86_400_000

    def __post_init__(self) -> None:
        if set(self.windows_ms) != set(ACTIONS):
            msg = f"join.windows_ms must name exactly the actions {list(ACTIONS)}, got {sorted(self.windows_ms)}"
            raise ValueError(msg)
        if self.idle_user_ms < self.max_window_ms:
            msg = "join.idle_user_ms must be >= the longest attribution window"
            raise ValueError(msg)

    @classmethod
    def from_settings(cls, settings: Settings) -> JoinConfig:
        """The ``[join]`` settings; the click log holds as many clicks as the click sequence."""
        j = settings.join
        return cls(dict(j.windows_ms), j.history, settings.lastn.capacity.get("click", 200), j.alpha, j.idle_user_ms)

    @functools.cached_property
    def max_window_ms(self) -> int:
        """An impression's window closes at ``ts + max_window_ms`` of watermark."""
        return max(self.windows_ms.values())

    def horizon(self, action: str, ts: int) -> int:
        """The deadline of the oldest impression an action at ``ts`` could match."""
        return ts - self.windows_ms[action] + self.max_window_ms


class Arrival(msgspec.Struct, frozen=True, gc=False):
    """One first delivery as the join sees it: the event (category / author resolved) and the partition
    watermark in force just before it. ``log_only`` clicks only enter the click log (idempotent)."""

    event: Event
    watermark: int
    category: str | None = None
    author_id: str | None = None
    log_only: bool = False  # a click to log for histories, not to join (a replay the dedup cannot place)


class Sample(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One record of the samples topic (docs/samples.md); ``labels`` and ``position`` are null on
    positives (``position`` also when the impression carried none)."""

    kind: Literal["positive", "impression", "canary"]
    sample_id: str
    user_id: str
    item_id: str
    request_id: str | None
    impression_ts: int
    ts: int
    category: str | None
    author_id: str | None
    history: list[str]
    alpha: float
    labels: dict[str, int] | None = None
    position: int | None = None


class Pending(msgspec.Struct, array_like=True, gc=False):
    """An impression whose window is open: its fields, history, label bits, positive sent."""

    event_id: str
    item_id: str
    request_id: str | None
    ts: int
    position: int | None
    category: str | None
    author_id: str | None
    history: list[str]
    labels: int = 0
    positive: bool = False


class Waiting(msgspec.Struct, array_like=True, gc=False):
    """An action delivered before any impression it matches."""

    event_id: str
    type: str
    item_id: str
    request_id: str | None
    ts: int


class UserJoin(msgspec.Struct, array_like=True, gc=False):
    """A user's join state: the click log ``(ts, event_id, item_id)`` ascending, open impressions by
    event id, waiting actions, the newest event ts (the checkpoint stores it as msgpack)."""

    clicks: list[tuple[int, str, str]] = msgspec.field(default_factory=list)
    pending: dict[str, Pending] = msgspec.field(default_factory=dict)
    waiting: list[Waiting] = msgspec.field(default_factory=list)
    newest: int = -1

    def log_click(self, ts: int, event_id: str, item_id: str, capacity: int) -> None:
        entry = (ts, event_id, item_id)
        at = bisect.bisect_left(self.clicks, entry)
        if at < len(self.clicks) and self.clicks[at] == entry:
            return
        self.clicks.insert(at, entry)
        if len(self.clicks) > capacity:
            del self.clicks[0]

    def empty(self) -> bool:
        return not self.pending and not self.waiting


@dataclass
class JoinOutput:
    """What a batch produced: samples, the users whose state changed (``None`` = state deleted) and
    counters ``(family, a, b) -> n`` for the metrics."""

    samples: list[Sample] = field(default_factory=list)
    changed: dict[str, UserJoin | None] = field(default_factory=dict)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)


def _matches(p: Pending, action: str, item_id: str, request_id: str | None, ts: int, cfg: JoinConfig) -> bool:
    if item_id != p.item_id or (request_id is not None and request_id != p.request_id):
        return False
    return p.ts <= ts <= p.ts + cfg.windows_ms[action]


class PartitionJoin:
    """The join state of one source partition (users -> :class:`UserJoin`) and its closing order."""

    def __init__(self, config: JoinConfig, users: dict[str, UserJoin] | None = None) -> None:
        self.config = config
        self.users: dict[str, UserJoin] = users if users is not None else {}
        closing: list[tuple[int, str, str]] = []  # (deadline, user, impression event id)
        expiring: list[tuple[int, str, str]] = []  # (horizon, user, action event id)
        self._idle: list[tuple[int, str]] = []  # (newest + idle_user_ms, user)
        # user -> (bisect end in its click log, the history built there), dropped when the log changes
        self._histories: dict[str, tuple[int, list[str]]] = {}
        self.open_impressions = sum(len(s.pending) for s in self.users.values())
        self.open_waiting = sum(len(s.waiting) for s in self.users.values())
        for user, state in self.users.items():
            for p in state.pending.values():
                closing.append((p.ts + config.max_window_ms, user, p.event_id))
            for w in state.waiting:
                expiring.append((config.horizon(w.type, w.ts), user, w.event_id))
            self._idle.append((state.newest + config.idle_user_ms, user))
        self._closing = DeadlineQueue(closing)
        self._expiring = DeadlineQueue(expiring)
        heapq.heapify(self._idle)

    def add(self, arrivals: Iterable[Arrival], out: JoinOutput) -> None:
        """Join first deliveries, in partition order."""
        users, cfg = self.users, self.config
        for a in arrivals:
            ev = a.event
            if ev.user_id.startswith(CANARY_PREFIX):
                if ev.type == "click" and not a.log_only:
                    out.samples.append(canary_record(ev))
                    out.counts[("samples", "canary", "heartbeat")] += 1
                continue  # freshness canaries never become training samples
            state = users.get(ev.user_id)
            if state is None:  # one idle-check entry per user, pushed again while the user is active
                state = users[ev.user_id] = UserJoin()
                heapq.heappush(self._idle, (ev.ts + cfg.idle_user_ms, ev.user_id))
            out.changed[ev.user_id] = state
            if state.clicks and a.watermark >= state.newest + cfg.idle_user_ms:
                state.clicks = []  # idle longer than idle_user_ms: the user's clicks are forgotten
                self._histories.pop(ev.user_id, None)
            state.newest = max(state.newest, ev.ts)
            if ev.type == "impression":
                if not a.log_only:
                    self._impression(state, a, out)
                continue
            if not a.log_only:
                self._action(state, a, out)
            if ev.type == "click":
                self._log_click(ev.user_id, state, ev)

    def _impression(self, state: UserJoin, a: Arrival, out: JoinOutput) -> None:
        ev, cfg = a.event, self.config
        deadline = ev.ts + cfg.max_window_ms
        if a.watermark >= deadline:
            out.counts[("impressions", "late", "")] += 1
            return
        if ev.event_id in state.pending:
            return
        p = Pending(ev.event_id, ev.item_id, ev.request_id, ev.ts, ev.position, a.category, a.author_id,
                    self._history(ev.user_id, state, ev.ts))
        state.pending[ev.event_id] = p
        self.open_impressions += 1
        self._closing.push((deadline, ev.user_id, ev.event_id))
        if state.waiting:
            kept = []
            for w in state.waiting:
                if a.watermark < cfg.horizon(w.type, w.ts) and _matches(p, w.type, w.item_id, w.request_id, w.ts, cfg):
                    self._label(ev.user_id, p, w.type, w.ts, out)
                else:
                    kept.append(w)
            self.open_waiting -= len(state.waiting) - len(kept)
            state.waiting = kept

    def _history(self, user: str, state: UserJoin, ts: int) -> list[str]:
        """Item ids of the newest ``history`` logged clicks with ts < ``ts``, newest first: the user's
        previous list itself while its click log is unchanged and no logged click lies between the two ts."""
        end = bisect.bisect_left(state.clicks, (ts,))
        known = self._histories.get(user)
        if known is not None and known[0] == end:
            return known[1]
        history = [c[2] for c in reversed(state.clicks[max(0, end - self.config.history):end])]
        self._histories[user] = (end, history)
        return history

    def _log_click(self, user: str, state: UserJoin, ev: Event) -> None:
        state.log_click(ev.ts, ev.event_id, ev.item_id, self.config.click_capacity)
        self._histories.pop(user, None)

    def _action(self, state: UserJoin, a: Arrival, out: JoinOutput) -> None:
        ev, cfg = a.event, self.config
        best: Pending | None = None
        # _matches inlined (a user has many open impressions; most differ in item_id): open, same item and
        # request, impression.ts <= action.ts <= impression.ts + window; the newest (ts, event_id) wins
        item, request, ts, window = ev.item_id, ev.request_id, ev.ts, cfg.windows_ms[ev.type]
        closed_before = a.watermark - cfg.max_window_ms
        for p in state.pending.values():
            if p.item_id != item or p.ts <= closed_before or (request is not None and request != p.request_id):
                continue
            if p.ts <= ts <= p.ts + window and (best is None or (p.ts, p.event_id) > (best.ts, best.event_id)):
                best = p
        if best is not None:
            self._label(ev.user_id, best, ev.type, ev.ts, out)
            return
        horizon = cfg.horizon(ev.type, ev.ts)
        if a.watermark >= horizon:
            out.counts[("actions", ev.type, "late")] += 1
            return
        state.waiting.append(Waiting(ev.event_id, ev.type, ev.item_id, ev.request_id, ev.ts))
        self.open_waiting += 1
        self._expiring.push((horizon, ev.user_id, ev.event_id))

    def _label(self, user: str, p: Pending, action: str, ts: int, out: JoinOutput) -> None:
        out.counts[("actions", action, "joined")] += 1
        p.labels |= _BITS[action]
        if action == "click" and not p.positive:
            p.positive = True
            out.samples.append(self._sample("positive", user, p, ts))
            out.counts[("samples", "positive", "click")] += 1

    def _sample(self, kind: Literal["positive", "impression"], user: str, p: Pending, ts: int,
                sid: str | None = None) -> Sample:
        """The record of impression ``p`` (``ts``: the click's on a positive, the impression's otherwise)."""
        positive = kind == "positive"
        return Sample(kind=kind, sample_id=sid or sample_id(kind, p.event_id), user_id=user, item_id=p.item_id,
                      request_id=p.request_id, impression_ts=p.ts, ts=ts, category=p.category,
                      author_id=p.author_id, history=p.history, alpha=self.config.alpha,
                      labels=None if positive else _LABELS[p.labels], position=None if positive else p.position)

    def close(self, watermark: int, out: JoinOutput) -> None:
        """Close every window the watermark has reached: impression samples out, waiting actions that can
        no longer match dropped, users idle beyond ``idle_user_ms`` with nothing open forgotten."""
        users = self.users
        for _, user, event_id in self._closing.pop_due(watermark):
            state = users.get(user)
            p = state.pending.pop(event_id, None) if state is not None else None
            if state is None or p is None:
                continue
            out.changed[user] = state
            self.open_impressions -= 1
            self._emit_impression(user, p, out)
        for _, user, event_id in self._expiring.pop_due(watermark):
            state = users.get(user)
            if state is None:
                continue
            for k, w in enumerate(state.waiting):
                if w.event_id == event_id:
                    del state.waiting[k]
                    self.open_waiting -= 1
                    out.changed[user] = state
                    out.counts[("actions", w.type, "no_impression")] += 1
                    break
        while self._idle and self._idle[0][0] <= watermark:
            _, user = heapq.heappop(self._idle)
            state = users.get(user)
            if state is None:
                continue
            if state.newest + self.config.idle_user_ms <= watermark:  # so every window of the user has closed
                del users[user]
                self._histories.pop(user, None)
                out.changed[user] = None
            else:
                heapq.heappush(self._idle, (state.newest + self.config.idle_user_ms, user))

    def close_open(self, out: JoinOutput) -> None:
        """Close every open window now, whatever the watermark: the idle flush of live traffic (a wall-clock
        decision, so never used where samples must equal a replay's). Click logs stay."""
        last = max(self._closing.last_deadline(), self._expiring.last_deadline())
        self.close(last, out)

    def _emit_impression(self, user: str, p: Pending, out: JoinOutput) -> None:
        sid = sample_id("impression", p.event_id)
        if not p.labels & _CLICK and not keeps(sid, self.config.alpha):
            out.counts[("impressions", "downsampled", "")] += 1
            return
        out.samples.append(self._sample("impression", user, p, p.ts, sid))
        for key in _IMPRESSION_COUNTS[p.labels]:
            out.counts[key] += 1
