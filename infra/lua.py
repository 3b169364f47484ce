"""The one Lua loader and runner: every script recstream runs in Redis lives in ``infra/lua/``.

A :class:`Script` is one or more files of that folder joined in order (a library file first, since Redis
scripts cannot import), called by the SHA1 computed locally, so no round trip is spent loading it up
front. A ``NOSCRIPT`` reply (Redis restarted or flushed its script cache) loads the source and re-runs
only the calls that met it; this is safe because every recstream script is idempotent or guarded.
Any other script error becomes one :class:`~infra.errors.StateError`.

>>> s = Script("exposure_read.lua")
>>> len(s.sha), s.names
(40, ('exposure_read.lua',))
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

from infra.errors import StateError

__all__ = ["Call", "Script"]

Call = tuple[Sequence[str], Sequence[Any]]
"""One script call: its KEYS and its ARGV."""


def _source(names: Sequence[str]) -> str:
    folder = resources.files("infra").joinpath("lua")
    return "\n".join(folder.joinpath(name).read_text(encoding="utf-8") for name in names)


class Script:
    """A packaged Lua script (the concatenation of ``names``) run with EVALSHA."""

    def __init__(self, *names: str) -> None:
        self.names = names
        self.source = _source(names)
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    def load(self, client: redis.Redis) -> None:
        """``SCRIPT LOAD`` it (after a NOSCRIPT reply to an ``EVALSHA`` queued by a caller)."""
        client.script_load(self.source)

    def __call__(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one call (one round trip; two when the script must be loaded first)."""
        return self.run(client, [(keys, args)])[0]

    def run(self, client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
        """EVALSHA every call in one pipeline; on NOSCRIPT load the script and rerun only those calls.

        Connection errors propagate unchanged (the caller retries the whole batch).
        """
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for i in todo:
                keys, args = calls[i]
                # the command, not pipe.evalsha: a cluster pipeline refuses that method but routes the command by key
                pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
            got = pipe.execute(raise_on_error=False)
            missing = []
            for i, reply in zip(todo, got, strict=True):
                if isinstance(reply, NoScriptError):
                    missing.append(i)
                elif isinstance(reply, ResponseError):
                    msg = f"Redis script {self.names[-1]} failed: {reply}"
                    raise StateError(msg) from reply
                elif isinstance(reply, Exception):
                    raise reply
                results[i] = reply
            if not missing:
                return results
            todo = missing
            if attempt == 0:
                self.load(client)
        msg = f"Redis script {self.names[-1]} still missing after SCRIPT LOAD"
        raise StateError(msg)
