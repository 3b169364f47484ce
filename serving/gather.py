"""Pipeline calls as data (:class:`Op`) and the per-shard gathering of hash fields (:class:`Gather`),
shared by ``request_features`` and the model reads.

redis-py spends ~30 µs of Python per command, so reading one field per id (1,000 candidates' vectors)
costs more than the reads themselves; one ``HMGET`` per shard hash costs a few.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Gather", "Op"]


@dataclass(frozen=True)
class Op:
    """One pipeline call: ``getattr(pipe, method)(*args, **kwargs)``."""

    method: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)


class Gather:
    """Hash fields of many ids spread over shard hashes, read with one ``HMGET`` per hash (at most one
    per shard instead of one command per id: redis-py spends ~30 µs per command) and put back in order.

    >>> g = Gather(["a", "b", "c"], lambda i: "k1" if i != "b" else "k2")
    >>> [(op.method, op.args) for op in g.ops]
    [('hmget', ('k1', ['a', 'c'])), ('hmget', ('k2', ['b']))]
    >>> g.values([[1, 3], [2]])
    [1, 2, 3]
    """

    def __init__(self, ids: Sequence[str], key_of: Callable[[str], str] | Sequence[str]) -> None:
        self._n = len(ids)
        keys = [key_of(i) for i in ids] if callable(key_of) else key_of  # or the keys, already computed
        groups: dict[str, list[int]] = {}
        for k, key in enumerate(keys):
            groups.setdefault(key, []).append(k)
        self._groups = list(groups.values())
        self.ops = [Op("hmget", (key, [ids[k] for k in idx])) for key, idx in groups.items()]

    def values(self, replies: Sequence[Sequence[Any]]) -> list[Any]:
        """The field values in the order of the ids, from the replies of :attr:`ops`."""
        out: list[Any] = [None] * self._n
        for idx, vals in zip(self._groups, replies, strict=True):
            for k, v in zip(idx, vals, strict=True):
                out[k] = v
        return out
