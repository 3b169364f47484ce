"""A queue of ``(deadline, ...)`` entries that a watermark releases in order (pure).

The label join keeps one entry per open impression and per waiting action and releases those whose
deadline the partition watermark has reached. Events arrive nearly in event-time order, so most entries
come with a deadline no earlier than the previous one: they go to a FIFO (append and pop, O(1)); the
others go to a heap. :meth:`DeadlineQueue.pop_due` merges both and returns the due entries sorted, the
order a single heap would pop them in.

>>> q = DeadlineQueue([(30, "c")])
>>> for entry in [(10, "a"), (20, "b"), (15, "late"), (40, "d")]:
...     q.push(entry)
>>> q.pop_due(20), len(q), q.last_deadline()
([(10, 'a'), (15, 'late'), (20, 'b')], 2, 40)
>>> q.pop_due(100), bool(q), q.last_deadline()
([(30, 'c'), (40, 'd')], False, -1)
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from typing import Any

__all__ = ["DeadlineQueue"]

Entry = tuple[Any, ...]  # (deadline, ...): compared as tuples


class DeadlineQueue:
    """Entries ``(deadline, ...)``, released by :meth:`pop_due` once the watermark reaches the deadline."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._fifo: deque[Entry] = deque(sorted(entries))
        self._heap: list[Entry] = []

    def __len__(self) -> int:
        return len(self._fifo) + len(self._heap)

    def push(self, entry: Entry) -> None:
        """Add one entry (O(1) when its deadline is no earlier than the newest one's)."""
        fifo = self._fifo
        if not fifo or entry[0] >= fifo[-1][0]:
            fifo.append(entry)
        else:
            heapq.heappush(self._heap, entry)

    def pop_due(self, watermark: int) -> list[Entry]:
        """Remove and return, sorted, every entry whose deadline is ``<= watermark``."""
        due: list[Entry] = []
        fifo, heap = self._fifo, self._heap
        while fifo and fifo[0][0] <= watermark:
            due.append(fifo.popleft())
        while heap and heap[0][0] <= watermark:
            due.append(heapq.heappop(heap))
        due.sort()
        return due

    def last_deadline(self) -> int:
        """The latest deadline held, or -1 when empty."""
        return max(self._fifo[-1][0] if self._fifo else -1, max((e[0] for e in self._heap), default=-1))
