"""Garbage-collector thresholds for the long-running processes (the worker, the trainer).

A worker batch allocates hundreds of thousands of short-lived objects (records, events, write plans,
samples) while a large state stays alive (the join's open impressions, caches, the imported frameworks).
With CPython's default thresholds ``(700, 10, 10)`` the young generation is collected every 700
allocations: the temporaries of the batch in flight survive those passes, get promoted, and the older
generations are then traversed again and again. Measured in-process on the ingest stage (``recstream
bench batch-shape`` shapes): 30–40 % of its CPU per event (docs/performance.md, "Garbage collection").
A young generation of tens of thousands of objects lets most temporaries die before a pass sees them, and
:func:`gc.freeze` moves what start-up built (modules, the app, settings) out of every later pass. Cycles
are still collected; the ratios between the generations stay CPython's. The trainer gains as much
(``learning.gc_young``: 10.3–10.9k → 14.0–14.2k samples/s from Kafka, two runs each, docs/learning.md).

>>> import gc
>>> before = gc.get_threshold()
>>> tune_gc(50_000); gc.get_threshold()
(50000, 10, 10)
>>> tune_gc(0); gc.get_threshold()  # 0 keeps the thresholds as they are
(50000, 10, 10)
>>> gc.unfreeze(); gc.set_threshold(*before)
"""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]


def tune_gc(young: int) -> None:
    """Freeze the objects alive now and collect the young generation every ``young`` allocations (the
    older ones at CPython's ratios); ``young = 0`` changes nothing (Python's defaults)."""
    if young <= 0:
        return
    gc.freeze()
    gc.set_threshold(young, 10, 10)
