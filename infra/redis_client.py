"""Redis clients for recstream: one place that connects, checks a client, and words a missing server.

With ``redis.cluster`` set, :func:`connect` returns a :class:`redis.cluster.RedisCluster` (typed as
``redis.Redis``: it speaks the same command API). Every key carries its shard's hash tag and every script
call touches one shard, so commands route by slot; the few multi-key reads go through :func:`mget` and
:func:`write_packed`, which split them per node.

Feature values (tile blobs, sequence members, Bloom bitmaps) are binary, so every recstream client uses
``decode_responses=False``; :func:`require_binary_client` refuses any other.

>>> require_binary_client(redis.Redis(decode_responses=True))
Traceback (most recent call last):
...
ValueError: recstream feature clients need decode_responses=False (values are binary)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

import hiredis
import redis
import redis.asyncio as aioredis
from redis.cluster import RedisCluster

from infra.errors import ConfigError, InfraError
from infra.keys import LAYOUT_KEY
from infra.redis_server import redact
from infra.resp import RowsHset

__all__ = ["check_layout", "connect", "is_cluster", "mget", "require_binary_client", "unreachable", "write_packed"]


def is_cluster(client: redis.Redis) -> bool:
    """True for a :class:`~redis.cluster.RedisCluster` client."""
    return isinstance(client, RedisCluster)


def require_binary_client(client: redis.Redis) -> None:
    """Feature blobs and sequence members are binary: refuse a client with ``decode_responses=True``."""
    kwargs = (cast(RedisCluster, client).nodes_manager.connection_kwargs if is_cluster(client)
              else client.connection_pool.connection_kwargs)
    if kwargs.get("decode_responses"):
        msg = "recstream feature clients need decode_responses=False (values are binary)"
        raise ValueError(msg)


def unreachable(url: str, exc: BaseException) -> InfraError:
    """The one error for a Redis that cannot be reached (password redacted, what to do).

    >>> print(unreachable("redis://:pw@127.0.0.1:1/0", ConnectionRefusedError("refused")))
    cannot reach Redis at redis://:***@127.0.0.1:1/0 (refused); start it with `recstream infra up` or ...
    """
    return InfraError(
        f"cannot reach Redis at {redact(url)} ({exc}); start it with `recstream infra up` or set RECSTREAM_REDIS_URL"
    )


def connect(url: str, *, cluster: bool = False, check: bool = True, timeout_s: float = 5.0,
            **kwargs: Any) -> redis.Redis:
    """A binary client for ``url`` (a :class:`~redis.cluster.RedisCluster` with ``cluster``: ``url`` names
    any node); with ``check`` it is pinged once and an unreachable server raises :func:`unreachable`'s
    :class:`~infra.errors.InfraError` instead of redis-py's traceback."""
    if cluster:
        try:
            client = cast(redis.Redis, RedisCluster.from_url(url, socket_connect_timeout=timeout_s, **kwargs))
        except redis.RedisError as exc:  # the cluster's slot map is read at construction
            raise unreachable(url, exc) from None
    else:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, **kwargs)
    if check:
        try:
            client.ping()
        except redis.RedisError as exc:
            raise unreachable(url, exc) from None
    return client


def check_layout(client: redis.Redis, shards: int, *, claim: bool = False) -> None:
    """Refuse to read or write data laid out for another shard count (``redis.shards``).

    Writers ``claim`` the layout (the first writer records its shard count); readers only compare, and a
    Redis with no recstream data passes.
    """
    if claim:
        client.set(LAYOUT_KEY, str(shards), nx=True)
    stored = client.get(LAYOUT_KEY)
    if stored is not None and int(stored) != shards:
        msg = (f"the recstream data in this Redis was written with redis.shards = {int(stored)}, settings say "
               f"{shards}: set RECSTREAM_REDIS_SHARDS={int(stored)} (or rebuild into an empty Redis)")
        raise ConfigError(msg)


def mget(client: redis.Redis, keys: Sequence[str]) -> list[Any]:
    """``MGET keys`` (values in key order); on a cluster one ``MGET`` per slot (keys span shards)."""
    if not keys:
        return []
    if is_cluster(client):
        return list(cast(RedisCluster, client).mget_nonatomic(list(keys)))
    return list(client.mget(keys))


_SEND_BYTES = 1 << 20  # write_packed sends what it has packed once this much is waiting


Args = Sequence[bytes | str | int | float]
Command = Args | RowsHset


def write_packed(client: redis.Redis, commands: Iterable[Command]) -> list[Any]:
    """Run ``commands`` in one round trip on one pooled connection, packed by hiredis in C: a redis-py
    pipeline spends ~1 µs of Python per argument, which dominates very wide writes (a publish of 100k
    embedding rows is ~270k arguments; a :class:`~infra.resp.RowsHset` is packed by numpy, faster still).
    ``commands`` may be a generator: they are packed as they come and
    sent in pieces of ~1 MB, so Redis parses one piece while Python builds and packs the next; the replies
    are read once everything is sent. An error reply raises after the connection is dropped (so no reply
    is left unread on a pooled connection). On a cluster: one pipeline, one round trip per node (each
    command goes to its key's slot; a multi-key command must stay in one slot).
    """
    if is_cluster(client):
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*(command.args() if isinstance(command, RowsHset) else command))  # type: ignore[no-untyped-call]
        return list(pipe.execute())
    pool = client.connection_pool
    conn: Any = pool.get_connection()
    try:
        sent, waiting, size = 0, list[bytes](), 0
        for command in commands:
            waiting.append(command.packed() if isinstance(command, RowsHset)
                           else hiredis.pack_command(tuple(command)))  # type: ignore[arg-type]
            size += len(waiting[-1])
            if size >= _SEND_BYTES:
                conn.send_packed_command([b"".join(waiting)])
                sent, waiting, size = sent + len(waiting), [], 0
        if waiting:
            conn.send_packed_command([b"".join(waiting)])  # one send for a small round, not one per command
            sent += len(waiting)
        return [conn.read_response() for _ in range(sent)]
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


async def write_packed_async(client: aioredis.Redis, commands: Sequence[Args]) -> list[Any]:
    """:func:`write_packed` for ``redis.asyncio`` (single node): the round packed by hiredis in C and sent
    at once, instead of ~30 µs of redis-py pipeline Python per command. An error reply raises after the
    connection is dropped, as does a cancelled read, so no reply is left unread on a pooled connection."""
    pool = client.connection_pool
    conn: Any = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command([b"".join(hiredis.pack_command(tuple(c)) for c in commands)])  # type: ignore[arg-type]
        return [await conn.read_response() for _ in commands]
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
