"""Where the trainer's time goes: CPU per trained positive of trainer, Redis and broker, Redis command stats,
py-spy stacks — :mod:`bench.profile_worker`'s method and helpers, aimed at ``recstream trainer``.

One private Kafka + Redis; ``--samples`` positives (:func:`bench.learning_bench.synthetic_positives`: 100k users
× 50k items, histories of up to 50 previous clicks) are produced to the samples topic first, then
``recstream trainer`` runs as a child process (:class:`stream.worker_process.WorkerProcess`). Past ``--warmup``
of the positives, a window from one training batch (its ``recstream_trainer_samples_total{outcome="trained"}``
counter moves by ``learning.batch_size``) to the first batch after ``--duration`` s or at ``--stop-at``
records /proc CPU of trainer and broker, Redis INFO cpu / commandstats deltas (the publishes every
``learning.publish_every_s``), committed offsets of the trainer's group (cross-check) and the two
``py-spy record`` runs (cpu and wall). Results: profile_trainer.json (labels merged) and profile_trainer.md.

    .venv/bin/python -m bench.profile_trainer --label after
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import free_port, private_services, with_sections
from bench.learning_bench import _produce as produce_samples
from bench.learning_bench import synthetic_positives
from bench.profile_report import Target, read_stacks, summarise, write
from bench.profile_worker import (
    HERE,
    Probes,
    add_window_arguments,
    events_before_offset,
    log,
    measure,
    per_event,
    wait_warm,
)
from infra import kafka_broker
from infra.topics import ensure_topics
from stream.lag import LagProbe
from stream.worker_process import WorkerProcess

KEY_FRAMES: dict[str, str] = {
    "Kafka poll + wrap (SampleSource.poll)": r"^(SampleSource\.)?poll \(online_learning/source\.py",
    "Trainer.handle (decode, dedup, buffer; all below)": r"^(Trainer\.)?handle \(online_learning/trainer\.py",
    "dedup (online_learning/dedup.py)": r"\(online_learning/dedup\.py",
    "ranking test (Learner.rank_positives)": r"rank_positives \(",
    "impression scoring (Learner.score_impressions)": r"score_impressions \(",
    "train step (Learner.train)": r"^(Learner\.)?train \(online_learning/learner\.py",
    "torch autograd backward": r"backward \(torch/",
    "sparse Adagrad (RowAdagrad)": r"^RowAdagrad\.",
    "row admissions / evictions (_apply_table_changes)": r"_apply_table_changes \(",
    "publish (Trainer.publish)": r"^(Trainer\.)?publish \(online_learning/trainer\.py",
    "redis-py Pipeline.execute": r"^(Pipeline\.)?execute \(redis/client\.py",
}
THREAD_ROLES = (("socketserver.py", "/metrics HTTP"), ("MainThread", "MainThread (trainer loop)"))
TRAINER = Target("trainer", "positive", 'recstream_trainer_samples_total{kind="positive",outcome="trained"}',
                 lambda s: s.learning.metrics_port, lambda s: s.kafka.samples_topic, KEY_FRAMES, THREAD_ROLES,
                 "profile_trainer", "Trainer profile: where the time goes", "bench.profile_trainer")


def profile(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Produce the positives, run the trainer, measure one window (see the module docstring)."""
    with private_services() as base:
        settings = with_sections(base, learning={"metrics_port": free_port()})
        ensure_topics(settings)
        log(f"producing {args.samples:,} positives")
        produce_samples(settings, synthetic_positives(args.samples))
        cum = events_before_offset(settings, settings.kafka.samples_topic)
        lag = LagProbe(settings)
        lag.group, lag.source_topics = settings.learning.group, [settings.kafka.samples_topic]
        log_path = work / f"trainer-{args.label}.log"
        trainer = WorkerProcess(settings, log_path, args=("trainer",))
        trainer.start()
        try:
            broker = kafka_broker.running_pid(settings)
            if broker is None or trainer.pid is None:
                raise RuntimeError("no broker or trainer pid")
            probes = Probes(settings, redis.Redis.from_url(settings.redis.effective_url), lag, cum, trainer.pid,
                            broker, TRAINER)
            log(f"trainer pid {trainer.pid} (log {log_path}); warming up")
            wait_warm(probes, trainer.alive, args.samples, args.warmup)
            log(f"measuring (≤ {args.duration:.0f} s, py-spy cpu + wall)")
            a, b = measure(probes, trainer.alive, args.samples, args, work)
        finally:
            code = trainer.stop()
    window = per_event(a, b)
    roles = TRAINER.thread_roles
    stacks = summarise(read_stacks(work / "cpu.txt", roles), read_stacks(work / "wall.txt", roles),
                       window["events"], window["worker_cpu_us_per_event"], TRAINER.key_frames)
    log(f"{window['events']:,} positives in {window['window_s']:.1f} s; trainer exit code {code}")
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tree": str(HERE),
            "command": "python -m bench.profile_trainer " + " ".join(sys.argv[1:]),
            "produce": {"positives": args.samples, "batch_size": settings.learning.batch_size},
            "window": window, "profile": stacks}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--samples", type=int, default=300_000, help="positives produced before the trainer starts")
    ap.add_argument("--label", default="after")
    add_window_arguments(ap, "positives", warmup=0.15)
    args = ap.parse_args(argv)
    work = Path("/tmp/profile-work") / f"trainer-{args.label}"
    work.mkdir(parents=True, exist_ok=True)
    md = write(args.out, args.label, profile(args, work), TRAINER)
    log(f"{args.label} → {md}")


if __name__ == "__main__":
    main()
