"""Seeded bad messages for the events topic: each one must become exactly one dead letter.

Every message is a single-event record (a batched record's bad elements are tested apart, in
tests/integration/test_pipeline.py) and is placed on the partition of its key, as a producer would. The
families: wrong JSON types, oversize identifiers, broken JSON, broken UTF-8, unknown event types,
timestamps far in the future (beyond ``worker.max_future_ms`` of the record's own timestamp), timestamps
beyond the contract's 13-digit range, timestamps older than every feature horizon behind the partition's
clock, payloads over the 64 KiB event limit, control characters in identifiers, an empty value, and a key
that puts the user on another partition than its own.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.integration.reference import DAY, partition_of

__all__ = ["FAMILIES", "Fuzzed", "fuzz_messages"]


@dataclass(frozen=True)
class Fuzzed:
    family: str
    key: bytes
    value: bytes | None


def _event(rng: random.Random, user: str, at: int) -> dict[str, object]:
    return {"event_id": f"fz-{rng.getrandbits(64):016x}", "type": rng.choice(["impression", "click", "like"]),
            "user_id": user, "item_id": f"i{rng.randrange(50)}", "ts": at - rng.randrange(DAY)}


def _dump(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _wrong_type(rng: random.Random, ev: dict[str, object]) -> bytes:
    field = rng.choice(["event_id", "type", "user_id", "item_id", "ts", "position", "request_id"])
    ev[field] = rng.choice([5, 1.5, True, None, ["x"], {"a": 1}]) if field != "ts" else rng.choice(
        ["1767225600000", 1.5e12, None, [1], True, -5])
    if field in ("position", "request_id"):
        ev[field] = {"deep": [1, 2]}
    return _dump(ev)


def _oversize(rng: random.Random, ev: dict[str, object]) -> bytes:
    ev[rng.choice(["event_id", "item_id", "request_id", "category"])] = "x" * rng.randrange(129, 5000)
    return _dump(ev)


def _broken_json(rng: random.Random, ev: dict[str, object]) -> bytes:
    raw = _dump(ev)
    return rng.choice([raw[: rng.randrange(1, len(raw) - 1)], raw.replace(b":", b"=", 1), b"{" * 200,
                       bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64))) + b"\x00",
                       b'{"event_id":"x",,}', b"[1,2", b"nan", b'{"ts":1e400}'])


def _broken_utf8(rng: random.Random, ev: dict[str, object]) -> bytes:
    raw = _dump(ev)
    cut = raw.index(b'"item_id":"') + len(b'"item_id":"')
    return raw[:cut] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28"]) + raw[cut:]


def _unknown_type(rng: random.Random, ev: dict[str, object]) -> bytes:
    ev["type"] = rng.choice(["purchase", "view", "CLICK", "", "impression ", "dislike"])
    return _dump(ev)


def _future(rng: random.Random, ev: dict[str, object]) -> bytes:
    now = int(time.time() * 1000)
    ev["ts"] = rng.choice([now + rng.randrange(2 * DAY, 3000 * DAY), 9_999_999_999_999])  # in range, ahead
    return _dump(ev)


def _out_of_range(rng: random.Random, ev: dict[str, object]) -> bytes:
    ev["ts"] = rng.choice([10**13, 10**13 + 7, 10**16, 2**63, -1])  # beyond the contract's 13 digits
    return _dump(ev)


def _ancient(rng: random.Random, ev: dict[str, object]) -> bytes:
    ev["ts"] = rng.choice([0, 1, 1_700_000_000, rng.randrange(10**12)])  # 1970, or seconds taken for ms
    return _dump(ev)


def _huge(rng: random.Random, ev: dict[str, object]) -> bytes:
    ev["category"] = "c"
    ev["extra"] = "y" * rng.randrange(64 * 1024, 200 * 1024)
    return _dump(ev)


def _control(rng: random.Random, ev: dict[str, object]) -> bytes:
    ev[rng.choice(["event_id", "item_id"])] = f"bad{chr(rng.randrange(0, 32))}id"
    return _dump(ev)


FAMILIES: dict[str, Callable[[random.Random, dict[str, object]], bytes]] = {
    "wrong_type": _wrong_type, "oversize": _oversize, "broken_json": _broken_json, "broken_utf8": _broken_utf8,
    "unknown_type": _unknown_type, "future_ts": _future, "ts_out_of_range": _out_of_range, "ancient_ts": _ancient,
    "huge": _huge,
    "control_chars": _control,
}


def fuzz_messages(n: int, seed: int, partitions: int, users: list[str], at: int) -> list[Fuzzed]:
    """``n`` bad messages over the families above, plus ``empty`` values and ``wrong_key`` placements."""
    rng = random.Random(seed)
    names = [*FAMILIES, "empty", "wrong_key"]
    out: list[Fuzzed] = []
    for k in range(n):
        family = names[k % len(names)]
        user = rng.choice(users)
        ev = _event(rng, user, at)
        if family == "empty":
            out.append(Fuzzed(family, user.encode(), None))
        elif family == "wrong_key":
            other = next(u for u in (f"k{j}" for j in range(10_000))
                         if partition_of(u, partitions) != partition_of(user, partitions))
            out.append(Fuzzed(family, other.encode(), _dump(ev)))
        else:
            out.append(Fuzzed(family, user.encode(), FAMILIES[family](rng, ev)))
    return out
