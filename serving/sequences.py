"""Serving reads of last-N sequences (mounted on ``FeatureClient``; layout in docs/sequences.md).

A sequence is a sorted set scored by event time whose members encode ``event_id, item_id, category,
author_id`` (see :mod:`filters.sequences`). Reads are newest first, ``before`` is an exclusive upper
bound on ``ts``. The category filter runs server-side in a small read-only script that scans the
(capacity-bounded) sequence from the newest end in growing chunks and stops at ``n`` matches, so a
common category costs about ``n`` entries and a rare one at most one pass over the sequence — one round
trip and only matching entries on the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from filters.events import EVENT_TYPES
from filters.sequences import Entry, decode_member, sequence_capacities
from infra.keys import KeyLayout
from infra.redis_client import require_binary_client
from infra.settings import Settings

__all__ = ["CATEGORY_SCAN_LUA", "Entry", "SequenceReader", "entries_of"]

CATEGORY_SCAN_LUA = """
-- KEYS[1] sequence; ARGV: n, max score ('+inf' or '(<before>'), first chunk, category
local key, n, maxs, chunk, cat = KEYS[1], tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local out, offset = {}, 0
while #out < 2 * n do
  local part = redis.call('ZRANGE', key, maxs, '-inf', 'BYSCORE', 'REV', 'LIMIT', offset, chunk, 'WITHSCORES')
  for i = 1, #part, 2 do
    local m = part[i]
    local a = string.find(m, '\\0', 1, true)
    local b = string.find(m, '\\0', a + 1, true)
    local c = string.find(m, '\\0', b + 1, true)
    if string.sub(m, b + 1, c - 1) == cat then
      out[#out + 1] = m; out[#out + 1] = part[i + 1]
      if #out >= 2 * n then break end
    end
  end
  if #part < 2 * chunk then break end
  offset = offset + chunk
  chunk = chunk * 2
end
return out
"""


def _max_score(before: int | None) -> str:
    return "+inf" if before is None else f"({int(before)}"


def entries_of(rows: list[Any]) -> list[Entry]:
    """Entries of a ``ZRANGE … WITHSCORES`` reply of a sequence, in reply order."""
    return [decode_member(member, int(float(score))) for member, score in rows]


class SequenceReader:
    """``last_n`` / ``last_n_multi`` over a sync ``redis.Redis`` client."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        require_binary_client(client)
        self.client = client
        self.capacities = sequence_capacities(settings.lastn)
        self.keys = KeyLayout(settings.redis.shards)
        self._scan = client.register_script(CATEGORY_SCAN_LUA)

    def _key(self, user_id: str, action: str) -> str | None:
        if action not in EVENT_TYPES:
            msg = f"unknown action {action!r}; known: {list(EVENT_TYPES)}"
            raise ValueError(msg)
        return self.keys.sequence(user_id, action) if action in self.capacities else None

    def last_n(
        self,
        user_id: str,
        action: str,
        n: int = 50,
        category: str | None = None,
        before: int | None = None,
    ) -> list[Entry]:
        """The newest ``n`` entries of ``user_id``'s ``action`` sequence, newest first.

        ``category`` keeps only entries of that category (the first ``n`` of them); ``before`` keeps
        only ``ts < before`` (epoch ms). An action without a configured sequence reads as empty.
        """
        call = self.last_n_call(user_id, action, n, before)
        if call is None:
            return []
        if category is None:
            return entries_of(self.client.zrange(*call[0], **call[1]))
        key = call[0][0]
        flat = self._scan(keys=[key], args=[n, _max_score(before), max(64, 2 * n), category])
        return [decode_member(flat[i], int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]

    def last_n_call(self, user_id: str, action: str, n: int,
                    before: int | None = None) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """``(args, kwargs)`` of the ``ZRANGE`` of :meth:`last_n` (no category) for a caller's pipeline;
        None when there is nothing to read (no sequence for ``action``, ``n <= 0``: it reads as empty).
        Decode the reply with :func:`entries_of`."""
        key = self._key(user_id, action)
        if key is None or n <= 0:
            return None
        return (key, _max_score(before), "-inf"), {"desc": True, "byscore": True, "offset": 0, "num": n,
                                                    "withscores": True}

    def queue_last_n(self, pipe: Any, user_id: str, action: str, n: int, before: int | None = None) -> bool:
        """Queue the read of :meth:`last_n` (no category) on ``pipe``; False when nothing was queued."""
        call = self.last_n_call(user_id, action, n, before)
        if call is not None:
            pipe.zrange(*call[0], **call[1])
        return call is not None

    def last_n_multi(
        self, user_id: str, requests: Mapping[str, int], before: int | None = None
    ) -> dict[str, list[Entry]]:
        """Several actions of one user in one round trip: ``{action: n}`` -> ``{action: entries}``."""
        pipe = self.client.pipeline(transaction=False)
        asked = [a for a, n in requests.items() if self.queue_last_n(pipe, user_id, a, n, before)]
        replies = pipe.execute() if asked else []
        out: dict[str, list[Entry]] = {a: [] for a in requests}
        for action, rows in zip(asked, replies, strict=True):
            out[action] = entries_of(rows)
        return out
