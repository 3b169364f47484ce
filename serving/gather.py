"""Pipeline calls as data (:class:`Op`), the per-shard gathering of hash fields (:class:`Gather`) and of
string keys (:class:`KeyGather`), shared by ``request_features``, the statistics and the model reads.

redis-py spends ~30 µs of Python per command, so reading one field per id (1,000 candidates' vectors)
costs more than the reads themselves; one ``HMGET`` per shard hash costs a few.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Gather", "KeyGather", "Op", "hash_slot_tag"]


@dataclass(frozen=True)
class Op:
    """One pipeline call: ``getattr(pipe, method)(*args, **kwargs)``."""

    method: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)


def hash_slot_tag(key: str) -> str:
    """What Redis Cluster hashes to place ``key``: the text of its first non-empty ``{…}``, else the key.

    >>> hash_slot_tag("rs2:{i.3}:i9:st"), hash_slot_tag("rs2:{}:x"), hash_slot_tag("plain")
    ('i.3', 'rs2:{}:x', 'plain')
    """
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if end > start + 1 else key


def _scatter(n: int, groups: Sequence[Sequence[int]], replies: Sequence[Sequence[Any]]) -> list[Any]:
    out: list[Any] = [None] * n
    for idx, vals in zip(groups, replies, strict=True):
        for k, v in zip(idx, vals, strict=True):
            out[k] = v
    return out


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
        return _scatter(self._n, self._groups, replies)


class KeyGather:
    """The values of many string keys: one ``MGET``, or with ``per_slot`` (a Redis Cluster, where a
    multi-key command must stay in one slot) one ``MGET`` per hash tag; :meth:`values` in key order.

    >>> g = KeyGather(["a{1}", "b{2}", "c{1}"], per_slot=True)
    >>> [op.args for op in g.ops], g.values([[10, 30], [20]])
    ([(['a{1}', 'c{1}'],), (['b{2}'],)], [10, 20, 30])
    >>> [op.args for op in KeyGather(["a{1}", "b{2}"], per_slot=False).ops]
    [(['a{1}', 'b{2}'],)]
    """

    def __init__(self, keys: Sequence[str], per_slot: bool) -> None:
        self._n = len(keys)
        self._single = not per_slot  # one MGET in key order: its reply needs no scattering
        if self._single:
            self._groups: list[list[int]] = []
            self.ops = [Op("mget", (list(keys),))] if keys else []
            return
        groups: dict[str, list[int]] = {}
        for k, key in enumerate(keys):
            groups.setdefault(hash_slot_tag(key), []).append(k)
        self._groups = list(groups.values())
        self.ops = [Op("mget", ([keys[k] for k in idx],)) for idx in self._groups]

    def values(self, replies: Sequence[Sequence[Any]]) -> list[Any]:
        """The values in the order of the keys, from the replies of :attr:`ops`."""
        if self._single:
            return list(replies[0]) if replies else []
        return _scatter(self._n, self._groups, replies)
