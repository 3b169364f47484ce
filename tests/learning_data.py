"""Synthetic samples for the learning tests: users who each prefer one category, items in categories.

User ``u<k>`` clicks items of category ``c<k % categories>`` (with probability ``focus``, else any
item); each positive's history is that user's previous clicks, newest first, as the join builds it.
Impression samples are the same impressions with click labels (clicked or a random non-click).
"""

from __future__ import annotations

import random

from filters.labels import Sample

LABELS_ZERO = {"click": 0, "like": 0, "collect": 0, "share": 0, "comment": 0}


def catalogue(items: int, categories: int) -> dict[str, str]:
    """item id -> category."""
    return {f"i{k}": f"c{k % categories}" for k in range(items)}


def stream(n: int, users: int = 50, items: int = 200, categories: int = 5, focus: float = 0.9,
           seed: int = 0, start_ts: int = 1_700_000_000_000, negatives: float = 0.0) -> list[Sample]:
    """``n`` positives, ts increasing by 100 ms; for a share ``negatives`` of them also two impression
    samples: the clicked one (click 1) and one of another item (click 0)."""
    rng = random.Random(seed)
    cat_of = catalogue(items, categories)
    by_cat: dict[str, list[str]] = {}
    for item, cat in cat_of.items():
        by_cat.setdefault(cat, []).append(item)
    clicks: dict[str, list[str]] = {}
    out: list[Sample] = []
    for k in range(n):
        user = f"u{rng.randrange(users)}"
        preferred = f"c{int(user[1:]) % categories}"
        item = rng.choice(by_cat[preferred]) if rng.random() < focus else rng.choice(list(cat_of))
        ts = start_ts + 100 * k
        history = list(reversed(clicks.get(user, [])[-50:]))
        out.append(Sample(kind="positive", sample_id=f"s1-p{seed}-{k}", user_id=user, item_id=item,
                          request_id=f"r{k}", impression_ts=ts - 50, ts=ts, category=cat_of[item],
                          author_id=None, history=history, alpha=1.0))
        if rng.random() < negatives:  # the clicked impression's own record, and one not clicked
            other = rng.choice(list(cat_of))
            for sid, shown, label in ((f"s1-c{seed}-{k}", item, 1), (f"s1-n{seed}-{k}", other, 0)):
                out.append(Sample(kind="impression", sample_id=sid, user_id=user, item_id=shown, request_id=f"r{k}",
                                  impression_ts=ts - 50, ts=ts - 50, category=cat_of[shown], author_id=None,
                                  history=history, alpha=1.0, labels={**LABELS_ZERO, "click": label}, position=1))
        clicks.setdefault(user, []).append(item)
    return out
