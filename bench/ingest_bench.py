"""``recstream bench ingest``: producer, raw consumers, Faust pass-through and the full worker, side by side.

One run, one private broker + Redis (:func:`bench.common.private_services`), the same synthetic events
(:func:`synthetic_events`) written twice per round: once as single-event records, once as batched
records (a record value may be a JSON array of events of its partition; :class:`stream.producer.EventProducer`
with ``producer.batch_max_events=1`` versus the producer defaults). Variants, in round-robin order:

1. ``produce-single`` / ``produce-batched``: ``EventProducer.send(event)`` until flushed;
2. ``aiokafka-single`` / ``aiokafka-batched``: a raw ``getmany(max_records=500)`` loop with decode (the ceiling);
3. ``confluent-single``: a raw confluent-kafka ``consume(500)`` loop with decode;
4. ``faust-single`` / ``faust-batched``: the worker's agent shape without Redis (:mod:`bench.faust_passthrough`);
5. ``worker-1p`` / ``worker-2p``: ``recstream worker`` (every feature on) with the batched topic as its events
   topic, 1 and 2 processes in one consumer group, from the first new Redis key (≈ first event consumed) until
   :class:`stream.lag.LagProbe` sees the group caught up.

Consumers use their own group from ``earliest``. Events/s (``eps``) = all events / (first record received →
last event decoded): with batched records one fetch or ``take_events`` batch can hold most of the data, so
"events after the first batch" (``faust_throughput.md``) says little; it is kept as ``eps_after_first_batch``
(within ~0.3% of ``eps`` for single-event records). The Faust pass-through stamps "received" with a sensor's
``on_message_in``; the full worker is timed as :mod:`bench.ingest_worker` says.
A failing variant is recorded with its error; the others still run. Ratios, not absolutes, are the result:
the machine is shared and noisy (``--rounds N`` interleaves the variants and reports medians).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from confluent_kafka import Consumer
from confluent_kafka.cimpl import NewTopic
from tqdm import tqdm

from bench.common import BAR, private_services, records_in, with_sections
from bench.faust_passthrough import COUNTERS
from bench.ingest_report import write_report
from bench.ingest_worker import bench_worker
from filters.events import Event, encode
from infra.settings import Settings
from infra.topics import admin_client
from recstream.generate import GeneratorConfig, generate_events
from stream.producer import EventProducer

FETCH_RECORDS = 500
WARMUP_TOPIC = "bench-warmup"


def synthetic_events(n: int, seed: int = 1) -> list[Event]:
    """Up to n events from the synthetic generator (it gives slightly fewer than asked)."""
    cfg = GeneratorConfig(users=max(100, n // 50), items=max(500, n // 20), days=2, events=n, seed=seed)
    out: list[Event] = []
    for event in generate_events(cfg):
        out.append(event)
        if len(out) == n:
            break
    return out


def synthetic_payloads(n: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    """n (key, value) single-event records, encoded as they travel on the wire."""
    return [(ev.user_id.encode(), encode(ev)) for ev in synthetic_events(n, seed)]


def create_topics(settings: Settings, names: list[str], timeout: float = 30.0) -> None:
    """Create topics with ``kafka.partitions`` partitions and wait until every partition has a leader."""
    admin = admin_client(settings)
    for f in admin.create_topics([NewTopic(t, settings.kafka.partitions, 1) for t in names]).values():
        f.result()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=10).topics
        if all(t in meta and meta[t].partitions and all(p.leader >= 0 for p in meta[t].partitions.values())
               for t in names):
            return
        time.sleep(0.1)
    msg = f"topics {names} have no leader after {timeout:.0f} s"
    raise RuntimeError(msg)


class Meter:
    """Events/s of a consumer loop: all events / (first batch received → last batch decoded); also the
    ``faust_throughput.md`` form, events after the first batch / (end of the first batch → last)."""

    def __init__(self, expect: int, desc: str) -> None:
        self.expect, self.seen, self.invalid, self.records = expect, 0, 0, 0
        self.first, self.after_first, self.first_batch, self.last = 0.0, 0.0, 0, 0.0
        self._bar = tqdm(total=expect, desc=desc, unit="ev", **BAR)

    def received(self) -> None:
        """Call when a non-empty batch arrives, before decoding it."""
        if not self.first:
            self.first = time.perf_counter()

    def add(self, valid: int, invalid: int, records: int) -> None:
        if not valid + invalid:
            return
        self.last = time.perf_counter()
        if not self.seen:
            self.after_first, self.first_batch = self.last, valid + invalid
        self.seen += valid + invalid
        self.invalid += invalid
        self.records += records
        self._bar.update(valid + invalid)

    @property
    def done(self) -> bool:
        return self.seen >= self.expect

    def result(self) -> dict[str, Any]:
        self._bar.close()
        if not self.done:
            msg = f"consumed only {self.seen} of {self.expect} events"
            raise RuntimeError(msg)
        return rates(self.seen, self.first, self.after_first, self.last, self.first_batch) | {
            "invalid": self.invalid, "records": self.records}


def rates(seen: int, first: float, after_first: float, last: float, first_batch: int) -> dict[str, Any]:
    """The two events/s forms of :class:`Meter` (``eps`` is the one the tables use)."""
    timed = seen - first_batch
    return {"eps": seen / (last - first), "elapsed_s": last - first, "first_batch_events": first_batch,
            "eps_after_first_batch": timed / (last - after_first) if timed and last > after_first else None}


# -- variants: producer ----------------------------------------------------------------------------------
def bench_producer(settings: Settings, topic: str, events: Sequence[Event], batched: bool) -> dict[str, Any]:
    """``EventProducer.send`` for every event, until flushed: single-event records or the batching default."""
    prod = {} if batched else {"batch_max_events": 1}
    s = with_sections(settings, kafka={"events_topic": topic}, producer=prod)
    with EventProducer(s) as producer:
        producer.send_raw(WARMUP_TOPIC, b"warm-up", b"{}")  # idempotence PID and connections, untimed
        producer.flush(60)
        started = time.perf_counter()
        for event in tqdm(events, desc=f"produce {topic}", unit="ev", **BAR):
            producer.send(event)
        producer.flush(120)
        elapsed = time.perf_counter() - started
    records = records_in(settings, topic)
    return {"eps": len(events) / elapsed, "elapsed_s": elapsed, "records": records,
            "events_per_record": len(events) / max(1, records),
            "producer_settings": s.producer.model_dump()}


# -- variants: raw consumers -----------------------------------------------------------------------------
async def _aiokafka(settings: Settings, topic: str, n: int, fmt: str) -> dict[str, Any]:
    count = COUNTERS[fmt]
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap, group_id=f"bench-{uuid.uuid4().hex}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    meter = Meter(n, f"aiokafka {fmt}")
    deadline = time.monotonic() + 300
    try:
        while not meter.done and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000, max_records=FETCH_RECORDS)
            if batches:
                meter.received()
            valid = invalid = records = 0
            for messages in batches.values():
                records += len(messages)
                for m in messages:
                    v, i = count(m.value)
                    valid, invalid = valid + v, invalid + i
            meter.add(valid, invalid, records)
    finally:
        await consumer.stop()
    return meter.result()


def bench_aiokafka(settings: Settings, topic: str, n: int, fmt: str) -> dict[str, Any]:
    return asyncio.run(_aiokafka(settings, topic, n, fmt))


def bench_confluent(settings: Settings, topic: str, n: int, fmt: str) -> dict[str, Any]:
    count = COUNTERS[fmt]
    consumer = Consumer({
        "bootstrap.servers": settings.kafka.bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False, "broker.address.family": "v4",
    })
    consumer.subscribe([topic])
    meter = Meter(n, f"confluent {fmt}")
    deadline = time.monotonic() + 300
    try:
        while not meter.done and time.monotonic() < deadline:
            valid = invalid = records = 0
            messages = consumer.consume(num_messages=FETCH_RECORDS, timeout=1.0)
            if messages:
                meter.received()
            for m in messages:
                if m.error():
                    continue
                v, i = count(m.value())
                valid, invalid, records = valid + v, invalid + i, records + 1
            meter.add(valid, invalid, records)
    finally:
        consumer.close()
    return meter.result()


def bench_faust(settings: Settings, topic: str, n: int, fmt: str) -> dict[str, Any]:
    """The pass-through Faust worker in a subprocess (its own group, from earliest)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench.faust_passthrough", "--bootstrap", settings.kafka.bootstrap,
               "--topic", topic, "--expect", str(n), "--out", str(out), "--format", fmt,
               "--partitions", str(settings.kafka.partitions), "--datadir", tmp,
               "--batch", str(settings.worker.batch_size), "--within", str(settings.worker.batch_within_s)]
        proc = subprocess.run(cmd, timeout=900, check=False, capture_output=True, text=True)
        if not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            msg = f"the Faust pass-through worker did not finish (exit {proc.returncode}): {' | '.join(tail)}"
            raise RuntimeError(msg)
        r = json.loads(out.read_text())
    seen = r["valid"] + r["invalid"]
    return rates(seen, r["first_in_ts"], r["first_ts"], r["last_ts"], seen - r["timed"]) | {
        "invalid": r["invalid"], "records": r["records"]}


# -- rounds ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    run: Callable[[Settings, dict[str, str], Sequence[Event]], dict[str, Any]]


VARIANTS: list[Variant] = [
    Variant("produce-single", "producer, single-event records",
            lambda s, t, ev: bench_producer(s, t["single"], ev, batched=False)),
    Variant("produce-batched", "producer, batched records (defaults)",
            lambda s, t, ev: bench_producer(s, t["batched"], ev, batched=True)),
    Variant("aiokafka-single", "raw aiokafka getmany + decode_event",
            lambda s, t, ev: bench_aiokafka(s, t["single"], len(ev), "single")),
    Variant("aiokafka-batched", "raw aiokafka getmany + decode_record (batched)",
            lambda s, t, ev: bench_aiokafka(s, t["batched"], len(ev), "batched")),
    Variant("confluent-single", "raw confluent consume + decode_event",
            lambda s, t, ev: bench_confluent(s, t["single"], len(ev), "single")),
    Variant("faust-single", "Faust pass-through, single-event records",
            lambda s, t, ev: bench_faust(s, t["single"], len(ev), "single")),
    Variant("faust-batched", "Faust pass-through, batched records",
            lambda s, t, ev: bench_faust(s, t["batched"], len(ev), "batched")),
    Variant("worker-1p", "full worker, 1 process, batched topic",
            lambda s, t, ev: bench_worker(s, t["batched"], len(ev), 1)),
    Variant("worker-1p-nojoin", "full worker, 1 process, batched topic, label join off",
            lambda s, t, ev: bench_worker(with_sections(s, join={"enabled": False}), t["batched"], len(ev), 1)),
    Variant("worker-1p-gc-default", "full worker, 1 process, batched topic, CPython's default GC thresholds",
            lambda s, t, ev: bench_worker(with_sections(s, worker={"gc_young": 0}), t["batched"], len(ev), 1)),
    Variant("worker-1p-within-0.2", "full worker, 1 process, batched topic, worker.batch_within_s 0.2 (the default "
            "before 2026-12-03)",
            lambda s, t, ev: bench_worker(with_sections(s, worker={"batch_within_s": 0.2}), t["batched"], len(ev), 1)),
    Variant("worker-2p", "full worker, 2 processes, batched topic",
            lambda s, t, ev: bench_worker(s, t["batched"], len(ev), 2)),
]


def _one(variant: Variant, settings: Settings, topics: dict[str, str], events: Sequence[Event]) -> dict[str, Any]:
    try:
        return variant.run(settings, topics, events)
    except Exception as exc:  # a failing variant is a result, not the end of the bench
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return {"error": f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"}


def run_rounds(
    settings: Settings, events: Sequence[Event], rounds: int, only: set[str]
) -> dict[str, list[dict[str, Any]]]:
    """Every selected variant once per round, round-robin, in reverse order every other round (so that no
    variant always runs first after the topics are filled); each round writes fresh topics."""
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in VARIANTS if v.name in only}
    create_topics(settings, [WARMUP_TOPIC])
    for r in range(rounds):
        topics = {fmt: f"bench-{fmt}-r{r}" for fmt in ("single", "batched")}
        create_topics(settings, list(topics.values()))
        selected = [v for v in VARIANTS if v.name in only][:: -1 if r % 2 else 1]
        for fmt, producer in (("single", "produce-single"), ("batched", "produce-batched")):
            if producer not in only:  # the consumers still need the data: fill the topic, untimed
                bench_producer(settings, topics[fmt], events, batched=fmt == "batched")
        for v in tqdm(selected, desc=f"round {r + 1}/{rounds}", **BAR):
            res = _one(v, settings, topics, events)
            runs[v.name].append(res)
            shown = f"{res['eps']:,.0f} events/s" if "eps" in res else res["error"]
            tqdm.write(f"  round {r + 1} {v.name}: {shown}{' — ' + res['warning'] if 'warning' in res else ''}")
    return runs


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per variant: the runs, their median events/s (None when no run succeeded) and the errors."""
    out: dict[str, Any] = {}
    for name, results in runs.items():
        rates = [r["eps"] for r in results if "eps" in r]
        out[name] = {"median_eps": statistics.median(rates) if rates else None, "runs_eps": rates,
                     "errors": [r["error"] for r in results if "error" in r], "runs": results}
    return out


def source_digest() -> str:
    """A digest of the worker's code (stream/, filters/, infra/): other people edit it while benches run."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    files = [p for d in ("stream", "filters", "infra") for p in (root / d).rglob("*") if p.suffix in {".py", ".lua"}]
    for path in sorted(files):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the tables give medians")
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()} or {v.name for v in VARIANTS}
    for noisy in ("aiokafka", "recstream.producer"):  # e.g. "Coordinator load in progress: retrying" at start
        logging.getLogger(noisy).setLevel(logging.ERROR)  # (delivery failures still raise in flush)
    events = synthetic_events(args.events)
    gc.collect()
    gc.freeze()  # the 200k events stay alive: keep them out of every GC pass of the consumers
    code_before = source_digest()
    with private_services() as settings:
        print(f"ingest bench: {len(events):,} events, {settings.kafka.partitions} partitions, "
              f"{args.rounds} round(s)", flush=True)
        runs = run_rounds(settings, events, args.rounds, only)
    code = {"digest_before": code_before, "digest_after": source_digest()}
    md = write_report(args.out, len(events), args.rounds, summarize(runs), {v.name: v.label for v in VARIANTS}, code)
    print(md.read_text())


if __name__ == "__main__":
    main()
