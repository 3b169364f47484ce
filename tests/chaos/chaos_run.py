"""The chaos run shared by ``tests/chaos`` (reduced size) and ``recstream bench chaos`` (full size).

The events go onto the topic at a fixed rate while the worker and the trainer run; at seeded random
moments of the feed one of them is SIGKILLed and restarted at once. A worker's recovery time is from its
SIGKILL to the group's first commit past the offsets it had reached. Each worker kill waits for that
recovery (about the group's session timeout) before the next kill, so a late kill can come after the feed
has ended and the worker has consumed everything: nothing is left to commit, and the recovery is the
moment a new member holds the partitions.
At the end the worker catches up, a last ``trainer --until-idle`` drains the samples, and the caller
compares features and samples with the brute-force reference (:mod:`tests.pipeline_check`).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from filters.events import ItemMeta
from infra.errors import KafkaError
from infra.kafka_log import client_config
from infra.settings import Settings
from stream.lag import LagProbe, LagRow
from stream.worker_process import WorkerProcess
from tests.integration.reference import Ev
from tests.pipeline_check import produce

__all__ = ["ChaosReport", "Feed", "chaos_settings", "committed", "group_members", "run_chaos", "wait_progress"]


@dataclass
class ChaosReport:
    events: int
    worker_kills: int = 0
    trainer_kills: int = 0
    # worker SIGKILL -> the group's next commit past it (after the feed ended: a new member's assignment)
    recovery_s: list[float] = field(default_factory=list)
    seconds: float = 0.0  # feed start -> worker caught up (kills and restarts included)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def chaos_settings(base: Settings) -> Settings:
    """The trainer remembers sample ids over the stream's whole event-time span (3 days), publishes often."""
    return base.model_copy(update={"learning": base.learning.model_copy(update={
        "max_users": 5000, "max_items": 5000, "batch_size": 256, "min_count": 1, "publish_every_s": 1.0,
        "metrics_port": 0, "group": f"trainer-{base.worker.app_id}", "dedup_horizon_ms": 4 * 86_400_000})})


def _rows(probe: LagProbe, timeout_s: float = 90.0) -> list[LagRow]:
    """The group's offsets (asked again while a restarted broker is not answering yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return probe.read()
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def committed(probe: LagProbe, timeout_s: float = 90.0) -> int:
    """The sum of the group's committed offsets."""
    return sum(r.committed or 0 for r in _rows(probe, timeout_s))


def group_members(admin: AdminClient, group: str) -> dict[str, bool]:
    """The members of a stable ``group`` (member id -> whether it was assigned partitions); empty while
    it rebalances or cannot be described."""
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    except (KafkaException, FutureTimeout):
        return {}
    if desc.state != ConsumerGroupState.STABLE:
        return {}
    return {m.member_id: bool(m.assignment is not None and m.assignment.topic_partitions) for m in desc.members}


def wait_progress(probe: LagProbe, beyond: int, timeout_s: float, worker: WorkerProcess | None = None,
                  killed: Iterable[str] = ()) -> None:
    """Until the group's committed offsets sum past ``beyond``, or — when everything produced had been
    consumed by then (a kill after the feed ended: nothing is left to commit) — until a member that is
    not one of the ``killed`` ones holds partitions. On timeout the error says what the group and the
    worker were doing (its liveness, the per-partition offsets and the end of its log)."""
    deadline = time.monotonic() + timeout_s
    gone, admin = set(killed), AdminClient(client_config(probe.settings.kafka, "chaos"))
    while True:
        rows = _rows(probe)
        done = sum(r.committed or 0 for r in rows)
        if done > beyond:
            return
        if done == beyond == sum(r.end for r in rows) and any(
                holds for member, holds in group_members(admin, probe.group).items() if member not in gone):
            return
        if time.monotonic() > deadline:
            msg = f"the worker made no progress within {timeout_s:.0f} s of its restart\n{_stall_report(probe, worker)}"
            raise AssertionError(msg)
        time.sleep(0.05)


def _stall_report(probe: LagProbe, worker: WorkerProcess | None, lines: int = 60) -> str:
    """The partitions' committed/end offsets and, for ``worker``, whether it runs and its last log lines."""
    rows = ", ".join(f"{r.topic}[{r.partition}] {r.committed}/{r.end}" for r in _rows(probe))
    report = [f"committed/end per partition: {rows}"]
    if worker is not None:
        report.append(f"worker alive: {worker.alive()}; last {lines} lines of {worker.log_path}:")
        report += worker.log_path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(report)


class Feed(threading.Thread):
    """Produces the events at ``rate`` per second, a second's worth at a time, in the background."""

    def __init__(self, settings: Settings, events: list[Ev], rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.events, self.rate = settings, events, rate
        self.error: BaseException | None = None

    def run(self) -> None:
        step = max(1, int(self.rate))
        started = time.monotonic()
        try:
            for k in range(0, len(self.events), step):
                produce(self.settings, self.events[k:k + step])
                ahead = started + (k + step) / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as exc:  # handed to the caller's thread
            self.error = exc


def run_chaos(settings: Settings, events: list[Ev], meta: dict[str, ItemMeta], worker_kills: int,
              trainer_kills: int, seed: int, log_dir: Path, rate: float,
              progress: Callable[[str], None] = lambda _line: None) -> ChaosReport:
    """Feed ``events`` at ``rate`` per second while the worker and the trainer are SIGKILLed (at seeded
    random moments over the feed) and restarted; then catch up and drain the samples."""
    rng = random.Random(seed)
    probe, admin = LagProbe(settings), AdminClient(client_config(settings.kafka, "chaos"))
    report = ChaosReport(len(events))
    victims = ["worker"] * worker_kills + ["trainer"] * trainer_kills
    rng.shuffle(victims)
    feed_s = len(events) / rate
    moments = sorted(rng.uniform(0.05, 0.95) * feed_s for _ in victims)
    produce(settings, [], meta)
    worker = WorkerProcess(settings, log_dir / "worker.log").start()
    trainer = WorkerProcess(settings, log_dir / "trainer.log", args=("trainer",)).start()
    probe.wait_until_caught_up(120)  # item metadata first: events without a category take it from there
    feed = Feed(settings, events, rate)
    started = time.monotonic()
    feed.start()
    try:
        for victim, moment in zip(victims, moments, strict=True):
            time.sleep(max(0.0, started + moment - time.monotonic()))
            if victim == "worker":
                at_kill, members = committed(probe), group_members(admin, probe.group)
                worker.crash()
                restarted = time.monotonic()
                worker = WorkerProcess(settings, log_dir / "worker.log").start()
                wait_progress(probe, at_kill, 180, worker, killed=members)
                report.recovery_s.append(time.monotonic() - restarted)
                report.worker_kills += 1
            else:
                trainer.crash()
                trainer = WorkerProcess(settings, log_dir / "trainer.log", args=("trainer",)).start()
                report.trainer_kills += 1
            progress(f"{time.monotonic() - started:6.1f} s: {victim} SIGKILLed and restarted")
        feed.join()
        if feed.error is not None:
            raise feed.error
        probe.wait_until_caught_up(1800)
        report.seconds = time.monotonic() - started
    finally:
        worker.stop()
        trainer.crash()
    last = WorkerProcess(settings, log_dir / "trainer.log", args=("trainer", "--until-idle", "3")).start()
    if last.wait(900) != 0:
        msg = f"the last trainer failed; log: {last.log_path}"
        raise AssertionError(msg)
    return report
