"""A brute-force label join over raw events, written apart from filters.labels (shared by unit and
integration tests). Quadratic and declarative: every question is answered by scanning the partition.

Per partition, in order: first deliveries only (by event_id), the watermark before each event
(max ts so far − lateness). An action joins the newest impression delivered before it that is still
open at its position and matches it; failing that, the first impression delivered after it that
matches while the action has not expired. Samples are then read off the joins.
"""

from __future__ import annotations

import bisect
import random
from collections import defaultdict
from dataclasses import dataclass

import mmh3
import msgspec

ACTIONS = ("click", "like", "collect", "share", "comment")
SEED = 0x5A3D1E


@dataclass(frozen=True)
class JEv:
    event_id: str
    type: str
    user_id: str
    item_id: str
    ts: int
    request_id: str | None = None
    position: int | None = None
    category: str | None = None
    author_id: str | None = None


@dataclass(frozen=True)
class Params:
    windows: dict[str, int]
    lateness: int
    history: int = 50
    capacity: int = 200
    alpha: float = 1.0
    idle: int = 30 * 86_400_000

    @property
    def wmax(self) -> int:
        return max(self.windows.values())


def sid(kind: str, event_id: str) -> str:
    key = kind + "\0" + event_id
    return f"s1-{mmh3.hash128(key, SEED, signed=False):032x}"


def kept(s: str, alpha: float) -> bool:
    return alpha >= 1.0 or mmh3.hash64(s, SEED, signed=False)[0] < alpha * 2.0**64


def record(sample: object) -> dict[str, object]:
    """A product sample as its JSON record reads, without its id (the reference's keys)."""
    fields: dict[str, object] = msgspec.json.decode(msgspec.json.encode(sample))
    fields.pop("sample_id")
    return fields


def assert_same_samples(got: dict[str, dict[str, object]], want: dict[str, dict[str, object]]) -> None:
    """``got == want``, failing with the differing fields of the first few samples."""
    diff = [(k, {f: (got[k].get(f), want[k].get(f)) for f in {*got[k], *want[k]} if got[k].get(f) != want[k].get(f)})
            for k in sorted(set(got) & set(want)) if got[k] != want[k]]
    assert not diff, diff[:3]
    assert set(got) == set(want), (sorted(set(got) - set(want))[:3], sorted(set(want) - set(got))[:3])


def _firsts_with_watermarks(events: list[JEv], lateness: int) -> list[tuple[JEv, int]]:
    out, seen, top = [], set(), None
    for ev in events:
        wm = -1 if top is None else top - lateness
        top = ev.ts if top is None else max(top, ev.ts)
        if ev.event_id not in seen:
            seen.add(ev.event_id)
            out.append((ev, wm))
    return out


def _match(imp: JEv, act: JEv, p: Params) -> bool:
    if imp.item_id != act.item_id or (act.request_id is not None and act.request_id != imp.request_id):
        return False
    return imp.ts <= act.ts <= imp.ts + p.windows[act.type]


def _history(rows: list[tuple[JEv, int]], at: int, p: Params, positions: list[int]) -> list[str]:
    """The user's click log just before position ``at``: clicks after the last idle reset, top capacity
    (``positions``: the user's rows, in order)."""
    ts = rows[at][0].ts
    mine = [(k, rows[k][0], rows[k][1]) for k in positions[:bisect.bisect_left(positions, at)]]
    start, newest = 0, None
    for k, ev, wm in [*mine, (at, rows[at][0], rows[at][1])]:
        if newest is not None and wm >= newest + p.idle:
            start = k
        newest = ev.ts if newest is None else max(newest, ev.ts)
    clicks = sorted({(ev.ts, ev.event_id, ev.item_id) for k, ev, _ in mine if k >= start and ev.type == "click"})
    clicks = clicks[-p.capacity:]
    return [c[2] for c in sorted((c for c in clicks if c[0] < ts), reverse=True)[: p.history]]


def join_partition(events: list[JEv], p: Params) -> dict[str, dict[str, object]]:
    """sample_id -> the sample's fields, for one partition's events in partition order."""
    rows = _firsts_with_watermarks(events, p.lateness)
    final_wm = rows[-1][1] if rows else -1
    if rows:
        final_wm = max(ev.ts for ev, _ in rows) - p.lateness
    accepted = {k for k, (ev, wm) in enumerate(rows) if ev.type == "impression" and wm < ev.ts + p.wmax}
    positions: dict[str, list[int]] = defaultdict(list)  # user -> its rows, in order (scans stay per user)
    for k, (ev, _) in enumerate(rows):
        positions[ev.user_id].append(k)
    impressions = {u: [k for k in ks if k in accepted] for u, ks in positions.items()}
    joined: dict[int, list[int]] = defaultdict(list)  # impression position -> action positions
    for j, (act, wm_j) in enumerate(rows):
        if act.type == "impression":
            continue
        horizon = act.ts - p.windows[act.type] + p.wmax
        before = [k for k in impressions[act.user_id] if k < j
                  and wm_j < rows[k][0].ts + p.wmax and _match(rows[k][0], act, p)]
        if before:
            joined[max(before, key=lambda k: (rows[k][0].ts, rows[k][0].event_id))].append(j)
            continue
        if wm_j >= horizon:
            continue  # late
        after = [k for k in impressions[act.user_id] if k > j
                 and rows[k][1] < horizon and _match(rows[k][0], act, p)]
        if after:
            joined[after[0]].append(j)
    out: dict[str, dict[str, object]] = {}
    for k in accepted:
        imp = rows[k][0]
        acts = [rows[j][0] for j in sorted(joined[k])]
        base = {"user_id": imp.user_id, "item_id": imp.item_id, "request_id": imp.request_id,
                "impression_ts": imp.ts, "category": imp.category, "author_id": imp.author_id,
                "history": _history(rows, k, p, positions[imp.user_id]), "alpha": p.alpha}
        clicks = [a for a in acts if a.type == "click"]
        if clicks:
            out[sid("positive", imp.event_id)] = {"kind": "positive", **base, "ts": clicks[0].ts, "labels": None,
                                                  "position": None}
        if final_wm >= imp.ts + p.wmax:
            s = sid("impression", imp.event_id)
            labels = {a: int(any(x.type == a for x in acts)) for a in ACTIONS}
            if labels["click"] or kept(s, p.alpha):
                out[s] = {"kind": "impression", **base, "ts": imp.ts, "labels": labels, "position": imp.position}
    return out


M = 60_000


def random_stream(seed: int, n: int = 600, users: int = 4, t0: int = 1_000 * M) -> list[JEv]:
    """Impressions and actions of a few users on few items: actions before, inside and after their
    windows, delivered before their impressions, without request ids, duplicated, with a long idle gap."""
    rng = random.Random(seed)
    out: list[JEv] = []
    t = t0
    impressions: list[JEv] = []
    for k in range(n):
        t += rng.randrange(0, 40_000)
        if k == n // 2:
            t += 3 * 60 * M  # idle gap: users forget their clicks (idle 2 h in these tests)
        user, item = f"u{rng.randrange(users)}", f"i{rng.randrange(6)}"
        roll = rng.random()
        if roll < 0.45 or not impressions:
            ev = JEv(f"e{k}", "impression", user, item, t + rng.randrange(-5 * M, M), f"r{rng.randrange(3)}",
                     rng.randrange(10), rng.choice(["c1", None]), rng.choice(["a1", None]))
            impressions.append(ev)
        elif roll < 0.9:
            imp = rng.choice(impressions[-12:])
            action = rng.choice(["click", "click", "like", "collect", "share", "comment"])
            ts = imp.ts + rng.choice([rng.randrange(0, 12 * M), rng.randrange(0, 40 * M), -rng.randrange(M)])
            request = imp.request_id if rng.random() < 0.6 else None
            ev = JEv(f"e{k}", action, imp.user_id, imp.item_id, ts, request)
        else:
            ev = JEv(f"e{k}", rng.choice(["click", "like"]), user, item, t, None)  # no impression
        out.append(ev)
        if rng.random() < 0.05:
            out.insert(rng.randrange(len(out)), out[rng.randrange(len(out))])  # a duplicate delivery
    # reorder a little: some actions are delivered before their impressions
    for _ in range(n // 10):
        k = rng.randrange(1, len(out))
        out[k - 1], out[k] = out[k], out[k - 1]
    return out
