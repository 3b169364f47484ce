"""Redis clients for recstream: one place that connects, checks a client, and words a missing server.

Feature values (tile blobs, sequence members, Bloom bitmaps) are binary, so every recstream client uses
``decode_responses=False``; :func:`require_binary_client` refuses any other.

>>> require_binary_client(redis.Redis(decode_responses=True))
Traceback (most recent call last):
...
ValueError: recstream feature clients need decode_responses=False (values are binary)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
import redis

from infra.errors import ConfigError, InfraError
from infra.keys import LAYOUT_KEY
from infra.redis_server import redact

__all__ = ["check_layout", "connect", "require_binary_client", "unreachable", "write_packed"]


def require_binary_client(client: redis.Redis) -> None:
    """Feature blobs and sequence members are binary: refuse a client with ``decode_responses=True``."""
    if client.connection_pool.connection_kwargs.get("decode_responses"):
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


def connect(url: str, *, check: bool = True, timeout_s: float = 5.0) -> redis.Redis:
    """A binary client for ``url``; with ``check`` it is pinged once and an unreachable server raises
    :func:`unreachable`'s :class:`~infra.errors.InfraError` instead of redis-py's traceback."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s)
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


def write_packed(client: redis.Redis, commands: Sequence[Sequence[bytes | str | int | float]]) -> list[Any]:
    """Run ``commands`` in one round trip on one pooled connection, packed by hiredis in C: a redis-py
    pipeline spends ~1 µs of Python per argument, which dominates very wide writes (a publish of 100k
    embedding rows is ~270k arguments). An error reply raises after the connection is dropped (so no
    reply is left unread on a pooled connection).
    """
    packed = [hiredis.pack_command(tuple(c)) for c in commands]  # type: ignore[arg-type]
    pool = client.connection_pool
    conn: Any = pool.get_connection()
    try:
        conn.send_packed_command([b"".join(packed)])  # one send, not one per command
        return [conn.read_response() for _ in packed]
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
