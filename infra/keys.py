"""The Redis key layout — the only module that spells key names (see docs/architecture.md).

Every key starts with the layout version ``rs2``. Entities are spread over ``shards`` shards per kind
(``redis.shards`` in settings; a stable MurmurHash3 of the entity id, never Python's ``hash()``), and
every key of a shard carries the shard's Redis Cluster hash tag (``{u.17}``, ``{i.3}``, ``{a.40}``).
So the worker applies a whole batch with one Lua call per shard — every key that call touches is in one
slot, on a cluster too — instead of one call per entity. A user's Bloom filters, sequences, statistics
and user × category statistics live in the user's shard; item metadata lives in the item's shard. The
replay guard and the dedup sets are per shard and source partition. Hash-scheme versions of Bloom
filters are part of their key, so a new scheme never reads bits written by an old one.

>>> keys = KeyLayout(shards=64)
>>> keys.shard("user", "u1"), keys.tag("user", "u1")
(48, '{u.48}')
>>> keys.sequence("u1", "click")
'rs2:{u.48}:u1:seq:click'
>>> keys.stats("user_category", ("u1", "food")), keys.stats("item", "i7")
('rs2:{u.48}:u1:st:c:food', 'rs2:{i.24}:i7:st')
>>> keys.bloom_slice("u1", 1, 1_700_006_400_000, 0)
'rs2:{u.48}:u1:bf1:1700006400000:0'
>>> keys.applied("item", 24), keys.dedup(48, 3)
('rs2:{i.24}:applied', 'rs2:{u.48}:dd:3')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import mmh3

LAYOUT = "rs2"
#: Seed of the shard hash (part of the layout version: changing it means a new ``LAYOUT``).
SHARD_SEED = 0x5EED_0002
EntityKind = Literal["user", "item", "author", "user_category"]
ENTITY_KINDS: tuple[EntityKind, ...] = ("user", "item", "author", "user_category")
_TAG_PREFIX = {"user": "u", "item": "i", "author": "a", "user_category": "u"}
LAYOUT_KEY = f"{LAYOUT}:layout"
"""String holding the shard count the data was written with (checked by writers and readers)."""


def shard_of(entity_id: str, shards: int) -> int:
    """The shard of an entity id: MurmurHash3 x86 32-bit (seed :data:`SHARD_SEED`) modulo ``shards``.

    >>> shard_of("u1", 64), shard_of("u1", 1)
    (48, 0)
    """
    return mmh3.hash(entity_id, SHARD_SEED, signed=False) % shards


@dataclass(frozen=True)
class KeyLayout:
    """Key names for one shard count (``KeyLayout.from_shards(settings.redis.shards)``)."""

    shards: int

    def shard(self, kind: str, entity_id: str) -> int:
        """Shard of an entity (``user_category`` entities are in their user's shard: pass the user id)."""
        return shard_of(entity_id, self.shards)

    def tag(self, kind: str, entity_id: str) -> str:
        """The hash tag of the entity's shard.

        >>> KeyLayout(8).tag("item", "i1"), KeyLayout(8).tag("author", "a1")
        ('{i.0}', '{a.3}')
        """
        return self.shard_tag(kind, self.shard(kind, entity_id))

    @staticmethod
    def shard_tag(kind: str, shard: int) -> str:
        """The hash tag of shard ``shard`` of ``kind``."""
        return "{" + _TAG_PREFIX[kind] + "." + str(shard) + "}"

    def _entity(self, kind: str, entity_id: str) -> str:
        return f"{LAYOUT}:{self.tag(kind, entity_id)}:{entity_id}"

    def bloom_index(self, user_id: str, hash_version: int) -> str:
        """Hash ``<slice_start>`` -> number of sub-slices, ``<slice_start>:n`` -> items in the newest one."""
        return f"{self._entity('user', user_id)}:bf{hash_version}"

    def bloom_slice(self, user_id: str, hash_version: int, slice_start_ms: int, sub: int) -> str:
        """The bitmap of one sub-slice of one time slice of a user's exposure filter."""
        return f"{self.bloom_index(user_id, hash_version)}:{slice_start_ms}:{sub}"

    def slice_key_prefix(self, user_id: str, hash_version: int) -> str:
        """Prefix P with ``bloom_slice(user, v, start, sub) == P + f"{start}:{sub}"`` (used by the Lua).

        >>> KeyLayout(64).slice_key_prefix("u1", 1)
        'rs2:{u.48}:u1:bf1:'
        """
        return self.bloom_index(user_id, hash_version) + ":"

    def sequence(self, user_id: str, action: str) -> str:
        """Sorted set of a user's last-N entries of one action (score = ts)."""
        return f"{self._entity('user', user_id)}:seq:{action}"

    def stats(self, kind: str, entity_id: str | tuple[str, str]) -> str:
        """The tile rings (one binary string) of one statistics entity."""
        if kind == "user_category":
            if not isinstance(entity_id, tuple):
                msg = "user_category entity ids are (user_id, category) tuples"
                raise TypeError(msg)
            user_id, category = entity_id
            return f"{self._entity('user', user_id)}:st:c:{category}"
        if isinstance(entity_id, tuple):
            msg = f"{kind} entity ids are strings"
            raise TypeError(msg)
        return f"{self._entity(kind, entity_id)}:st"

    def item_meta(self, item_id: str) -> str:
        """Hash with ``category``, ``author_id``, ``publish_ts`` of one item."""
        return f"{self._entity('item', item_id)}:meta"

    def applied(self, kind: str, shard: int) -> str:
        """Hash ``<source partition>`` -> ``"<offset>:<index>"``, the newest source position applied to
        this shard (the replay guard)."""
        return f"{LAYOUT}:{self.shard_tag(kind, shard)}:applied"

    def dedup(self, shard: int, partition: int) -> str:
        """Hash ``<event_id>`` -> ``"<offset>:<index>"`` of its first delivery (user shard, source partition)."""
        return f"{LAYOUT}:{self.shard_tag('user', shard)}:dd:{partition}"

    def join_state(self, shard: int, partition: int) -> str:
        """Hash ``<user_id>`` -> the user's label-join state (msgpack), ``"\\0pos"`` -> ``"<offset>:<index>"``
        of the source position it holds (user shard, source partition)."""
        return f"{LAYOUT}:{self.shard_tag('user', shard)}:jn:{partition}"

    def embedding(self, kind: Literal["user", "item"], shard: int, version: str) -> str:
        """Hash ``<id>`` -> float32 bytes of the ID embedding of model ``version`` (user or item shard,
        so a user's embedding shares its features' slot).

        >>> KeyLayout(64).embedding("user", 48, "v3")
        'rs2:{u.48}:emb:v3'
        """
        return f"{LAYOUT}:{self.shard_tag(kind, shard)}:emb:{version}"

    def item_vectors(self, shard: int, version: str) -> str:
        """Hash ``<item_id>`` -> float32 bytes of the item tower's output vector under ``version``."""
        return f"{LAYOUT}:{self.shard_tag('item', shard)}:vec:{version}"

    def shard_list(self, ids: list[str]) -> list[int]:
        """:func:`shard_of` of many ids, inlined (hash them once, pass the list to :meth:`stats_keys`
        and :meth:`item_vector_keys`).

        >>> keys = KeyLayout(8)
        >>> keys.shard_list(["i1", "a1"]) == [keys.shard("item", "i1"), keys.shard("author", "a1")]
        True
        """
        n = self.shards
        return [mmh3.hash(i, SHARD_SEED, signed=False) % n for i in ids]

    def stats_keys(self, kind: str, ids: list[str], shards: list[int] | None = None) -> list[str]:
        """:meth:`stats` of many ``user`` / ``item`` / ``author`` ids at once (one hash per id, the shard
        tags built once: the hot path of a 1,000-candidate request); ``shards`` = :meth:`shard_list` of
        ``ids`` when the caller has it.

        >>> KeyLayout(64).stats_keys("item", ["i7"]) == [KeyLayout(64).stats("item", "i7")]
        True
        """
        heads = [f"{LAYOUT}:{self.shard_tag(kind, s)}:" for s in range(self.shards)]
        of_ids = shards if shards is not None else self.shard_list(ids)
        return [f"{heads[s]}{i}:st" for i, s in zip(ids, of_ids, strict=True)]

    def item_vector_keys(self, ids: list[str], version: str, shards: list[int] | None = None) -> list[str]:
        """:meth:`item_vectors` of each of many item ids (the hash holding its vector); ``shards`` as in
        :meth:`stats_keys`."""
        keys = [self.item_vectors(s, version) for s in range(self.shards)]
        return [keys[s] for s in (shards if shards is not None else self.shard_list(ids))]

    def dedup_times(self, shard: int, partition: int) -> str:
        """Sorted set of the same event ids scored by event time, to trim the dedup horizon."""
        return f"{LAYOUT}:{self.shard_tag('user', shard)}:ddt:{partition}"


def watermark(group: str, topic: str, partition: int) -> str:
    """Hash ``offset``, ``index``, ``max_ts`` of one consumed partition, persisted after every batch.

    >>> watermark("recstream", "recstream-events", 3)
    'rs2:wm:recstream:recstream-events:3'
    """
    return f"{LAYOUT}:wm:{group}:{topic}:{partition}"


MODEL_CURRENT = f"{LAYOUT}:model:current"
"""String: the model version serving reads (switched atomically by a full update or a rollback)."""
MODEL_VERSIONS = f"{LAYOUT}:model:versions"
"""Sorted set of the kept model versions scored by creation time (epoch ms)."""


def model_key(version: str, part: Literal["manifest", "weights", "defaults"]) -> str:
    """Per-version strings: ``manifest`` (JSON), ``weights`` (the frozen towers, msgpack), ``defaults``
    (hash ``user`` / ``item`` -> the shared default rows' embeddings).

    >>> model_key("v3", "manifest")
    'rs2:model:v3:manifest'
    """
    return f"{LAYOUT}:model:{version}:{part}"


def trainer_seen(group: str, bucket: int | str) -> str:
    """List of packed 64-bit sample-id hashes trainer ``group`` trained in one event-time bucket (its
    dedup; ``bucket="*"`` gives the SCAN pattern).

    >>> trainer_seen("recstream-trainer", 7)
    'rs2:trainer:recstream-trainer:seen:7'
    """
    return f"{LAYOUT}:trainer:{group}:seen:{bucket}"
