"""Events and brute-force reference counts of ``bench.stats_bench`` (both sides are checked against it)."""

from __future__ import annotations

import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import msgspec

from filters.events import EVENT_TYPES, Event, encode
from filters.tiles import parse_duration
from infra.settings import Settings
from recstream.generate import DAY_MS, GeneratorConfig, World, generate_events

KINDS: tuple[str, ...] = ("user", "user_category", "item", "author")
TILE_ALIGN_MS = 300_000  # the smallest tile (5m): the event span and the query time are aligned to it
Payload = tuple[bytes, bytes]
Counts = dict[str, dict[str, dict[str, dict[str, int]]]]  # kind -> entity -> window -> type -> count


def make_events(n: int, days: float, seed: int = 5) -> list[Event]:
    """The last ``n`` of a little more synthetic events, whose event time ends at the current 5-minute
    boundary, with category and author filled in from the item metadata. (The last, not the first: the
    generator emits in time order, and the span must end *now* for Faust's wall-clock expiry.)"""
    now_ms = int(time.time() * 1000)
    start = (now_ms - int(days * DAY_MS)) // TILE_ALIGN_MS * TILE_ALIGN_MS
    cfg = GeneratorConfig(users=max(100, n // 50), items=max(500, n // 20), days=days,
                          events=n + n // 10 + 50, seed=seed, start_ms=start)
    world = World(cfg)
    out: list[Event] = []
    for ev in generate_events(cfg, world):
        meta = world.item_meta(int(ev.item_id[1:]))
        out.append(msgspec.structs.replace(ev, category=meta.category, author_id=meta.author_id))
    return out[-n:]


def payloads_of(events: Sequence[Event]) -> list[Payload]:
    """(key, value) as on the wire: keyed by user, the event contract's JSON."""
    return [(ev.user_id.encode(), encode(ev)) for ev in events]


def entities_of(ev: Event) -> dict[str, str]:
    """The statistics entities one event counts for, as strings (``user_category`` = ``user|category``)."""
    out = {"user": ev.user_id, "item": ev.item_id}
    if ev.category is not None:
        out["user_category"] = f"{ev.user_id}|{ev.category}"
    if ev.author_id is not None:
        out["author"] = ev.author_id
    return out


def choose_sample(events: Sequence[Event], per_kind: int = 3, seed: int = 11) -> list[tuple[str, str]]:
    """The ``per_kind`` busiest entities of each kind plus ``per_kind`` random ones."""
    rng = random.Random(seed)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for ev in events:
        for kind, entity in entities_of(ev).items():
            counts[kind][entity] += 1
    sample: list[tuple[str, str]] = []
    for kind in KINDS:
        busiest = [e for e, _ in counts[kind].most_common(per_kind)]
        rest = sorted(set(counts[kind]) - set(busiest))
        sample += [(kind, e) for e in busiest + rng.sample(rest, min(per_kind, len(rest)))]
    return sample


def window_bounds(settings: Settings, at_ms: int, mode: str) -> dict[str, tuple[int, int]]:
    """``[start, end)`` per window: recstream's window at ``T`` = hopping ``[E - W, E)`` with
    ``E = ceil(T / tile) * tile``; tumbling = the epoch-aligned bucket of size ``W`` holding ``E - 1``."""
    out = {}
    for window, tile in settings.stats.windows.items():
        size, t = parse_duration(window), parse_duration(tile)
        end = math.ceil(at_ms / t) * t
        if mode == "tumbling":
            start = (end - 1) // size * size
            out[window] = (start, start + size)
        else:
            out[window] = (end - size, end)
    return out


def reference_counts(
    events: Sequence[Event], sample: Sequence[tuple[str, str]], bounds: dict[str, tuple[int, int]], dedup: bool
) -> Counts:
    """Brute-force counts of the sampled entities over the produced events, in ``bounds``."""
    wanted = set(sample)
    out: Counts = {}
    for kind, entity in sample:
        out.setdefault(kind, {})[entity] = {w: dict.fromkeys(EVENT_TYPES, 0) for w in bounds}
    seen: set[str] = set()
    for ev in events:
        if dedup:
            if ev.event_id in seen:
                continue
            seen.add(ev.event_id)
        for kind, entity in entities_of(ev).items():
            if (kind, entity) in wanted:
                for w, (start, end) in bounds.items():
                    if start <= ev.ts < end:
                        out[kind][entity][w][ev.type] += 1
    return out


def compare(rec: Counts | None, faust: Counts, ref_dedup: Counts, ref_raw: Counts) -> dict[str, Any]:
    """Cell-by-cell agreement over (kind, entity, window, type). ``rec`` is ``None`` when the Faust windows
    are not recstream's (tumbling): then only Faust vs its reference is checked."""
    cells = same = faust_ok = explained = 0
    diffs: list[dict[str, Any]] = []
    for kind, entities in ref_raw.items():
        for entity, wins in entities.items():
            for w, types in wins.items():
                for t in types:
                    f, raw, d = faust[kind][entity][w][t], ref_raw[kind][entity][w][t], ref_dedup[kind][entity][w][t]
                    cells += 1
                    faust_ok += f == raw
                    if rec is None:
                        continue
                    r = rec[kind][entity][w][t]
                    same += r == f
                    explained += r != f and r == d and f == raw
                    if r != f and len(diffs) < 8:
                        diffs.append({"kind": kind, "entity": entity, "window": w, "type": t, "recstream": r,
                                      "faust": f, "reference_dedup": d, "reference_raw": raw})
    out: dict[str, Any] = {"cells": cells, "faust_eq_reference_raw": faust_ok}
    if rec is not None:
        out |= {"recstream_eq_faust": same, "differences_explained_by_duplicates": explained,
                "first_differences": diffs}
    return out


def recstream_check(rec: Counts, ref_dedup: Counts) -> dict[str, int]:
    """recstream vs the brute-force reference with dedup."""
    cells = [(rec[k][e][w][t], n) for k, es in ref_dedup.items() for e, ws in es.items()
             for w, ts in ws.items() for t, n in ts.items()]
    return {"cells": len(cells), "recstream_eq_reference_dedup": sum(a == b for a, b in cells)}
