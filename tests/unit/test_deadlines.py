"""DeadlineQueue against a plain heap: the same entries released at the same watermarks, in the same order."""

from __future__ import annotations

import heapq
import random

import pytest

from filters.deadlines import DeadlineQueue


@pytest.mark.parametrize("disorder", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("seed", range(5))
def test_releases_what_a_heap_releases_in_heap_order(disorder: float, seed: int) -> None:
    rng = random.Random(seed)
    initial = [(rng.randrange(1000), f"u{rng.randrange(9)}", f"e{k}") for k in range(rng.randrange(20))]
    queue, heap = DeadlineQueue(initial), list(initial)
    heapq.heapify(heap)
    clock, watermark = 0, 0
    for step in range(400):
        clock += rng.randrange(4)
        deadline = clock - rng.randrange(60) if rng.random() < disorder else clock  # late ones go back
        entry = (deadline + 50, f"u{rng.randrange(9)}", f"x{step}")
        queue.push(entry)
        heapq.heappush(heap, entry)
        if rng.random() < 0.2:
            watermark = max(watermark, clock - rng.randrange(30))
            expected = []
            while heap and heap[0][0] <= watermark:
                expected.append(heapq.heappop(heap))
            assert queue.pop_due(watermark) == expected
            assert len(queue) == len(heap)
            assert queue.last_deadline() == max((e[0] for e in heap), default=-1)
    assert queue.pop_due(10**9) == sorted(heap)
    assert not queue and queue.last_deadline() == -1


def test_ties_come_out_in_full_entry_order() -> None:
    queue = DeadlineQueue()
    for entry in [(5, "b", "2"), (5, "a", "9"), (5, "a", "1")]:
        queue.push(entry)  # same deadline: all in the FIFO, arrival order
    assert queue.pop_due(5) == [(5, "a", "1"), (5, "a", "9"), (5, "b", "2")]
