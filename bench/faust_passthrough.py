"""A Faust worker that only decodes and validates events, for ``recstream bench ingest``.

Run as a subprocess: ``python -m bench.faust_passthrough --bootstrap H:P --topic T --expect N --out F``.
It consumes with the same agent shape as the real worker (concurrency 1, ``take_events(n, within)``),
decodes every message with :func:`filters.events.decode_event`, and when ``N`` messages have been seen
writes ``{"first_ts", "last_ts", "valid", "invalid", "timed"}`` (``timed`` = messages after the first
batch, which arrive between the two perf-counter stamps) (perf-counter seconds) to F and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import faust

from filters.events import decode_event
from infra.errors import EventValidationError


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--datadir", required=True)
    args = parser.parse_args()

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
    state = {"first": 0.0, "first_batch": 0, "seen": 0, "valid": 0, "invalid": 0}

    @app.agent(topic, concurrency=1)
    async def passthrough(stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(args.batch, within=0.2):
            if not state["seen"]:
                state["first"] = time.perf_counter()
                state["first_batch"] = len(events)
            for event in events:
                try:
                    decode_event(event.message.value)
                    state["valid"] += 1
                except EventValidationError:
                    state["invalid"] += 1
            state["seen"] += len(events)
            if state["seen"] >= args.expect:
                Path(args.out).write_text(json.dumps({
                    "first_ts": state["first"], "last_ts": time.perf_counter(),
                    "valid": state["valid"], "invalid": state["invalid"],
                    "timed": state["seen"] - state["first_batch"],
                }))
                os.kill(os.getpid(), signal.SIGTERM)

    faust.Worker(app, loglevel="error", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
