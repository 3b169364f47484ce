"""The Redis key layout — the only module that spells key names (see docs/redis_layout.md).

Every key starts with the layout version ``rs1`` and carries a Redis Cluster hash tag naming the entity
that owns it (``{u:<user>}``, ``{i:<item>}``, ``{a:<author>}``), so one Lua script can update all of an
entity's keys atomically on a cluster too. Hash-scheme versions of Bloom filters are part of their key,
so a new scheme never reads bits written by an old one.

>>> bloom_slice("u1", 1, 1_700_006_400_000, 0)
'rs1:{u:u1}:bf1:1700006400000:0'
>>> sequence("u1", "click")
'rs1:{u:u1}:seq:click'
>>> stats("user_category", ("u1", "food"))
'rs1:{u:u1}:st:c:food'
>>> stats("item", "i7"), applied(entity_tag("author", "a3"))
('rs1:{i:i7}:st', 'rs1:{a:a3}:applied')
"""

from __future__ import annotations

from typing import Literal

LAYOUT = "rs1"
EntityKind = Literal["user", "item", "author", "user_category"]
ENTITY_KINDS: tuple[EntityKind, ...] = ("user", "item", "author", "user_category")
_TAG_PREFIX = {"user": "u", "item": "i", "author": "a"}


def entity_tag(kind: str, entity_id: str) -> str:
    """The hash tag of an entity; ``user_category`` entities live in their user's slot.

    >>> entity_tag("user", "u1"), entity_tag("item", "i1")
    ('{u:u1}', '{i:i1}')
    """
    return "{" + _TAG_PREFIX[kind] + ":" + entity_id + "}"


def _user(user_id: str) -> str:
    return f"{LAYOUT}:{{u:{user_id}}}"


def bloom_index(user_id: str, hash_version: int) -> str:
    """Hash ``<slice_start>`` -> number of sub-slices, ``<slice_start>:n`` -> items in the newest one."""
    return f"{_user(user_id)}:bf{hash_version}"


def bloom_slice(user_id: str, hash_version: int, slice_start_ms: int, sub: int) -> str:
    """The bitmap of one sub-slice of one time slice of a user's exposure filter."""
    return f"{_user(user_id)}:bf{hash_version}:{slice_start_ms}:{sub}"


def sequence(user_id: str, action: str) -> str:
    """Sorted set of a user's last-N entries of one action (score = ts)."""
    return f"{_user(user_id)}:seq:{action}"


def stats(kind: str, entity_id: str | tuple[str, str]) -> str:
    """The tile rings (one binary string) of one statistics entity."""
    if kind == "user_category":
        if not isinstance(entity_id, tuple):
            msg = "user_category entity ids are (user_id, category) tuples"
            raise TypeError(msg)
        user_id, category = entity_id
        return f"{_user(user_id)}:st:c:{category}"
    if isinstance(entity_id, tuple):
        msg = f"{kind} entity ids are strings"
        raise TypeError(msg)
    return f"{LAYOUT}:{entity_tag(kind, entity_id)}:st"


def applied(tag: str) -> str:
    """Hash ``<source partition>`` -> highest source offset applied to this entity (the replay guard)."""
    return f"{LAYOUT}:{tag}:applied"


def dedup(tag: str) -> str:
    """Hash ``<event_id>`` -> offset of its first delivery, for this entity."""
    return f"{LAYOUT}:{tag}:dd"


def dedup_times(tag: str) -> str:
    """Sorted set of the same event ids scored by event time, to trim the dedup horizon."""
    return f"{LAYOUT}:{tag}:ddt"


def item_meta(item_id: str) -> str:
    """Hash with ``category``, ``author_id``, ``publish_ts`` of one item."""
    return f"{LAYOUT}:{{i:{item_id}}}:meta"


def watermark(group: str, topic: str, partition: int) -> str:
    """Hash ``offset``, ``max_ts`` of one consumed partition, persisted after every batch."""
    return f"{LAYOUT}:wm:{group}:{topic}:{partition}"


def slice_key_prefix(user_id: str, hash_version: int) -> str:
    """Prefix P with ``bloom_slice(user, v, start, sub) == P + f"{start}:{sub}"`` (used by the Lua).

    >>> slice_key_prefix("u1", 1)
    'rs1:{u:u1}:bf1:'
    """
    return bloom_slice(user_id, hash_version, 0, 0)[: -len("0:0")]
