"""A Faust worker that only decodes and validates events, for ``recstream bench ingest``.

Run as a subprocess: ``python -m bench.faust_passthrough --bootstrap H:P --topic T --expect N --out F
[--format single|batched]``. It consumes with the same agent shape as the real worker (concurrency 1,
``take_events(n, within)``) and decodes every record: ``single`` with :func:`filters.events.decode_event`
(one event per record), ``batched`` with :func:`filters.events.decode_record` (a record may hold a JSON
array of events). It counts *events*, not records; when ``N`` events have been seen it writes
``{"first_in_ts", "first_ts", "last_ts", "valid", "invalid", "records", "timed"}`` to F and exits
(perf-counter seconds: ``first_in_ts`` = the first record handed to Faust's conductor, seen by a one-method
sensor; ``first_ts`` = the end of the first batch; ``timed`` = events after the first batch).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust

from filters.events import decode_event, decode_record
from infra.errors import EventValidationError


def count_single(value: bytes | None) -> tuple[int, int]:
    """(valid, invalid) events of a single-event record."""
    try:
        decode_event(value)
    except EventValidationError:
        return 0, 1
    return 1, 0


def count_batched(value: bytes | None) -> tuple[int, int]:
    """(valid, invalid) events of a record that may be a batch (:func:`filters.events.decode_record`)."""
    decoded = decode_record(value)
    return len(decoded.events), len(decoded.errors)


class FirstIn(faust.Sensor):
    """Stamps the arrival of the first record (``on_message_in``: before Faust's per-record work)."""

    def __init__(self, state: dict[str, float]) -> None:
        super().__init__()
        self.marks = state

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        if not self.marks["first_in"]:
            self.marks["first_in"] = time.perf_counter()


COUNTERS: dict[str, Callable[[bytes | None], tuple[int, int]]] = {"single": count_single, "batched": count_batched}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expect", type=int, required=True, help="events (not records) to consume")
    parser.add_argument("--out", required=True)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--within", type=float, default=0.2)
    parser.add_argument("--format", choices=sorted(COUNTERS), default="single")
    parser.add_argument("--datadir", required=True)
    return parser.parse_args()


def main() -> None:
    args = _parse()
    count = COUNTERS[args.format]
    app = faust.App(
        f"bench-passthrough-{os.getpid()}",
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=args.datadir,
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        web_enabled=False,
    )
    topic = app.topic(args.topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    state: dict[str, Any] = {"first_in": 0.0, "first": 0.0, "first_batch": 0, "seen": 0, "valid": 0,
                             "invalid": 0, "records": 0}
    app.sensors.add(FirstIn(state))

    @app.agent(topic, concurrency=1)
    async def passthrough(stream: faust.StreamT[bytes]) -> None:
        async for records in stream.take_events(args.batch, within=args.within):  # type: ignore[attr-defined]
            seen = 0
            for record in records:
                valid, invalid = count(record.message.value)
                state["valid"] += valid
                state["invalid"] += invalid
                seen += valid + invalid
            if not state["seen"]:
                state["first"] = time.perf_counter()
                state["first_batch"] = seen
            state["seen"] += seen
            state["records"] += len(records)
            if state["seen"] >= args.expect:
                Path(args.out).write_text(json.dumps({
                    "first_in_ts": state["first_in"], "first_ts": state["first"], "last_ts": time.perf_counter(),
                    "valid": state["valid"], "invalid": state["invalid"], "records": state["records"],
                    "timed": state["seen"] - state["first_batch"],
                }))
                os.kill(os.getpid(), signal.SIGTERM)

    faust.Worker(app, loglevel="error", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
