"""What the stages hand to the feature writers: one Kafka delivery of one validated event.

A :class:`Delivery` is one event of one message of the user-keyed events topic; its source position
``(offset, index)`` — the index is its place in a batched record, 0 for a single-event record — is what
the replay guards compare.

>>> from filters.events import Event
>>> ev = Event(event_id="e1", type="click", user_id="u1", item_id="i1", ts=1_700_000_000_000)
>>> Delivery(offset=41, event=ev, category="food", author_id="a1", index=3).index
3
"""

from __future__ import annotations

import msgspec

from filters.events import Event

__all__ = ["Delivery"]


class Delivery(msgspec.Struct, frozen=True, gc=False):
    """One delivery of one event from the user-keyed events topic.

    ``stats_late`` means the event is older than the partition watermark: it still enters the
    last-N sequences and the exposure filters but is left out of every statistic. ``category`` /
    ``author_id`` come from the event, else from the item metadata (the stage resolves them;
    ``None`` = unknown). ``watermark`` is the partition's event-time watermark just before this delivery
    (what the label join closes windows on; -1 before the partition's first event).
    """

    offset: int
    event: Event
    stats_late: bool = False
    category: str | None = None
    author_id: str | None = None
    index: int = 0
    watermark: int = -1
