"""The one wall clock: every reader and stage takes an injectable ``clock`` that returns epoch ms.

Tests and replays pass a fixed or stepping clock; production uses :func:`now_ms`. Event-time logic never
calls the clock (it runs on watermarks); the clock only stamps freshness and defaults a read's ``at``.

>>> fixed: Clock = lambda: 1_700_000_000_000
>>> fixed(), now_ms() > 1_700_000_000_000
(1700000000000, True)
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "now_ms"]

Clock = Callable[[], int]
"""A source of the current time in epoch milliseconds."""


def now_ms() -> int:
    """The current wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000
