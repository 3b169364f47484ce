"""Where the worker's time goes: CPU per event of worker, Redis and broker, Redis command stats, py-spy stacks.

One private Kafka + Redis; N synthetic events and the item metadata are produced first, then ``recstream worker``
runs from this tree (WorkerProcess) or from ``--tree`` (``git archive --ref`` into it when absent, removed after).
Past ``--warmup`` of the events, a window from one batch end (the worker's ``recstream_events_processed`` counter
moves) to the first batch end after ``--duration`` s or at ``--stop-at`` records /proc CPU of worker and broker JVM,
Redis INFO cpu / commandstats deltas, committed offsets mapped to events (cross-check) and two concurrent
``py-spy record`` runs: ``cpu`` (on-CPU) and ``wall`` (``--idle``). profile.json merges the labels; profile.md.
The helpers take a :class:`Target` (what is profiled: its counter, thread roles, key frames, result files);
:mod:`bench.profile_trainer` profiles ``recstream trainer`` with them.

    .venv/bin/python -m bench.profile_worker --label before --tree /tmp/profile-work/before
    .venv/bin/python -m bench.profile_worker --label after
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import redis
from confluent_kafka import Consumer, TopicPartition

from bench.common import free_port, private_services, with_sections
from bench.profile_report import RATE_HZ, WORKER, Target, read_stacks, summarise, write
from infra import kafka_broker
from infra.settings import Settings, to_env
from recstream.generate import GeneratorConfig, generate_events, generate_items
from stream.lag import LagProbe
from stream.producer import EventProducer
from stream.worker_process import WorkerProcess

POLL_S = 0.5  # /metrics scrapes: each costs the worker ~10 ms of CPU
HERE = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
def log(msg: str) -> None:
    print(f"[profile] {msg}", file=sys.stderr, flush=True)


# -- workload ---------------------------------------------------------------------------------------------
def _events(n: int) -> tuple[list[Any], GeneratorConfig]:
    """``bench.ingest_bench.synthetic_events`` when importable (the tree is being edited), else the generator."""
    cfg = GeneratorConfig(users=max(100, n // 50), items=max(500, n // 20), days=2, events=n, seed=1)
    try:
        from bench.ingest_bench import synthetic_events

        return synthetic_events(n), cfg
    except Exception:
        return list(generate_events(cfg))[:n], cfg


def produce(settings: Settings, n: int, batch_events: int | None) -> dict[str, Any]:
    events, cfg = _events(n)
    prod = {} if batch_events is None else {"batch_max_events": batch_events}
    s = with_sections(settings, producer=prod)
    items = 0
    with EventProducer(s) as producer:
        for meta in generate_items(cfg):
            producer.send_item(meta)
            items += 1
        for ev in events:
            producer.send(ev)
        producer.flush(120)
    return {"events": len(events), "items": items, "batch_max_events": s.producer.batch_max_events}


def events_before_offset(settings: Settings, topic: str | None = None) -> dict[int, list[int]]:
    """Per partition of ``topic`` (default: the events topic): ``cum[o]`` = events in the records before
    offset ``o`` (a record that is not a JSON array counts 1)."""
    topic = topic or settings.kafka.events_topic
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": "profile-readback",
                         "enable.auto.commit": False, "broker.address.family": "v4"})
    split = msgspec.json.Decoder(list[msgspec.Raw])
    cum: dict[int, list[int]] = {}
    try:
        parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        cum = {p: [0] for p in parts}
        while any(len(cum[p]) - 1 < ends[p] for p in parts):
            for m in consumer.consume(500, timeout=1.0):
                part, v = m.partition(), m.value() or b""
                if m.error() is None and part is not None:
                    cum[part].append(cum[part][-1] + (len(split.decode(v)) if v[:1] == b"[" else 1))
    finally:
        consumer.close()
    return cum


# -- the worker -------------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TreeWorker(WorkerProcess):
    """``recstream worker`` from another source tree, with only the env vars that tree's Settings knows."""

    def __init__(self, tree: Path, settings: Settings, log_path: Path) -> None:
        super().__init__(settings, log_path, loglevel="warning")
        self.tree = tree

    def _python(self, code: str) -> list[str]:
        return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(self.tree)!r}); {code}"]

    def _env(self) -> dict[str, str]:
        known = subprocess.run(self._python("import json; from infra.settings import Settings, to_env; "
                                            "print(json.dumps(sorted(to_env(Settings()))))"),
                               env={**os.environ, "PYTHONPATH": str(self.tree)}, cwd=self.tree,
                               capture_output=True, check=True).stdout
        wanted = set(json.loads(known))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
        return env | {k: v for k, v in to_env(self.settings).items() if k in wanted} | {
            "PYTHONPATH": str(self.tree), "PYTHONUNBUFFERED": "1"}

    def start(self) -> TreeWorker:
        env = self._env()  # the topics as that tree knows them (this tree may have dropped some)
        subprocess.run(self._python("from infra.settings import load_settings; from infra.topics import "
                                    "ensure_topics; ensure_topics(load_settings())"),
                       env=env, cwd=self.tree, check=True, capture_output=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            cmd = [*self._python("from infra.cli import main; main()"), "worker", "--loglevel", self.loglevel]
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.tree,
                                          start_new_session=True, preexec_fn=_die_with_parent)
        time.sleep(1.0)
        if not self.alive():
            raise RuntimeError(f"old-tree worker exited: {self.log_path.read_text()[-500:]}")
        return self


# -- counters ---------------------------------------------------------------------------------------------
def proc_cpu_s(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` (all threads, waited-for children), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


def processed(port: int, counter: str = WORKER.counter) -> int | None:
    """The sum of the /metrics lines starting with ``counter`` (default: the worker's
    ``recstream_events_processed_total``, all types), or None when /metrics does not answer."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(counter)))


@dataclass
class Snapshot:
    t: float
    worker_s: float
    broker_s: float
    redis_s: float
    events: int | None
    committed_events: int
    commands: dict[str, dict[str, float]]
    load: tuple[float, float, float] = field(default_factory=os.getloadavg)


@dataclass
class Probes:
    settings: Settings
    client: redis.Redis
    lag: LagProbe
    cum: dict[int, list[int]]
    worker_pid: int
    broker_pid: int
    target: Target = WORKER

    @property
    def port(self) -> int:
        return self.target.port(self.settings)

    def committed_events(self) -> int:
        topic = self.target.topic(self.settings)
        return sum(self.cum[r.partition][min(r.committed, len(self.cum[r.partition]) - 1)]
                   for r in self.lag.read() if r.topic == topic)

    def snap(self) -> Snapshot:
        info = self.client.info("cpu")
        cmds = {k.removeprefix("cmdstat_"): {"calls": v["calls"], "usec": v["usec"]}
                for k, v in self.client.info("commandstats").items()}
        s = Snapshot(time.perf_counter(), proc_cpu_s(self.worker_pid), proc_cpu_s(self.broker_pid),
                     float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
                     processed(self.port, self.target.counter), 0, cmds)
        s.committed_events = self.committed_events()
        return s


# -- the window -------------------------------------------------------------------------------------------
def wait_warm(probes: Probes, alive: Callable[[], bool], n: int, frac: float, timeout_s: float = 300) -> None:
    """Until the worker's counter reached ``frac`` of the events (polled every POLL_S)."""
    deadline = time.monotonic() + timeout_s
    while (processed(probes.port, probes.target.counter) or 0) < frac * n:
        if not alive() or time.monotonic() > deadline:
            raise RuntimeError("the worker exited during warm-up" if not alive() else "warm-up timed out")
        time.sleep(POLL_S)


def spy(pid: int, out: Path, duration: float, idle: bool) -> subprocess.Popen[bytes]:
    exe = str(Path(sys.executable).with_name("py-spy"))
    cmd = [exe, "record", "--pid", str(pid), "--nonblocking", "--threads", "-r", str(RATE_HZ),
           "-d", str(int(duration) + 2), "-f", "raw", "-o", str(out)] + (["--idle"] if idle else [])
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=out.with_suffix(".log").open("wb"))


def measure(probes: Probes, alive: Callable[[], bool], n: int, args: argparse.Namespace,
            work: Path) -> tuple[Snapshot, Snapshot]:
    """Snapshot, two py-spy runs, then snapshot again at the first batch end (counter change) after
    ``--duration`` or at ``--stop-at`` of the events (at most 3 × ``--duration``), stop py-spy."""
    port, hard = probes.port, 3 * args.duration
    a = probes.snap()
    spies = [spy(probes.worker_pid, work / f"{k}.txt", hard, k == "wall") for k in ("cpu", "wall")]
    last = a.events or 0
    while time.perf_counter() - a.t < hard:
        time.sleep(POLL_S)
        if not alive():
            raise RuntimeError("the worker exited during the window")
        now = processed(port, probes.target.counter) or 0
        if now != last and (now >= args.stop_at * n or time.perf_counter() - a.t >= args.duration):
            break
        last = now
    b = probes.snap()
    for p in spies:
        p.send_signal(signal.SIGINT)
    for p in spies:
        p.wait(30)
    if not b.events or b.events == a.events:
        raise RuntimeError(f"no batch ended in the {b.t - a.t:.0f} s window: use more --events (a worker batch "
                           f"holds up to worker.batch_size records × producer.batch_max_events events; a trainer "
                           f"counts a batch of learning.batch_size positives)")
    return a, b


def per_event(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    events = (b.events - a.events) if a.events is not None and b.events is not None else (
        b.committed_events - a.committed_events)
    ev = max(1, events)
    cmds = {}
    for name, v in b.commands.items():
        calls = v["calls"] - a.commands.get(name, {}).get("calls", 0)
        usec = v["usec"] - a.commands.get(name, {}).get("usec", 0)
        if calls:
            cmds[name] = {"calls_per_event": calls / ev, "usec_per_event": usec / ev, "usec_per_call": usec / calls}
    lua = sum(cmds.get(c, {}).get("calls_per_event", 0.0) for c in ("evalsha", "eval", "fcall"))
    return {"window_s": b.t - a.t, "events": events, "committed_events": b.committed_events - a.committed_events,
            "events_per_s": events / (b.t - a.t), "worker_cpu_us_per_event": (b.worker_s - a.worker_s) * 1e6 / ev,
            "redis_cpu_us_per_event": (b.redis_s - a.redis_s) * 1e6 / ev,
            "broker_cpu_us_per_event": (b.broker_s - a.broker_s) * 1e6 / ev,
            "worker_cpu_share": (b.worker_s - a.worker_s) / (b.t - a.t), "lua_calls_per_event": lua,
            "redis_usec_per_event": sum(c["usec_per_event"] for c in cmds.values()),
            "commands": dict(sorted(cmds.items(), key=lambda kv: -kv[1]["usec_per_event"])),
            "loadavg_start": a.load, "loadavg_end": b.load}


# -- main -------------------------------------------------------------------------------------------------
def prepare_tree(tree: Path | None, ref: str) -> bool:
    """Extract ``ref`` into ``tree`` when it does not exist; True when this run created it."""
    if tree is None or tree.exists():
        return False
    tree.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(HERE), "archive", ref], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
    if archive.wait():
        raise RuntimeError(f"git archive {ref} failed")
    return True


def profile(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    tree = None if args.tree is None or args.tree.resolve() == HERE else args.tree.resolve()
    batch = args.batch_events if args.batch_events is not None else (1 if tree else None)
    with private_services() as base:
        settings = with_sections(base, worker={"metrics_port": free_port()})
        log(f"producing {args.events:,} events (batch_max_events={batch or 'default'}) + items")
        produced = produce(settings, args.events, batch)
        cum = events_before_offset(settings)
        log_path = work / f"worker-{args.label}.log"
        worker = TreeWorker(tree, settings, log_path) if tree else WorkerProcess(settings, log_path, "warning")
        worker.start()
        try:
            broker = kafka_broker.running_pid(settings)
            if broker is None or worker.pid is None:
                raise RuntimeError("no broker or worker pid")
            probes = Probes(settings, redis.Redis.from_url(settings.redis.effective_url), LagProbe(settings), cum,
                            worker.pid, broker)
            log(f"worker pid {worker.pid} ({tree or HERE}, log {log_path}); warming up")
            wait_warm(probes, worker.alive, produced["events"], args.warmup)
            log(f"measuring (≤ {args.duration:.0f} s, py-spy cpu + wall)")
            a, b = measure(probes, worker.alive, produced["events"], args, work)
        finally:
            code = worker.stop()
        from bench.common import records_in

        dead = records_in(settings, settings.kafka.dlq_topic)
    window = per_event(a, b)
    stacks = summarise(read_stacks(work / "cpu.txt"), read_stacks(work / "wall.txt"), window["events"],
                       window["worker_cpu_us_per_event"])
    log(f"{window['events']:,} events in {window['window_s']:.1f} s; worker exit code {code}")
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tree": str(tree or HERE),
            "command": "python -m bench.profile_worker " + " ".join(sys.argv[1:]), "produce": produced,
            "dead_letters": dead, "window": window, "profile": stacks}


def add_window_arguments(ap: argparse.ArgumentParser, unit: str, warmup: float) -> None:
    """The measurement window's options (and ``--out``), shared by the worker's and the trainer's profile."""
    ap.add_argument("--duration", type=float, default=20.0, help="longest window, s")
    ap.add_argument("--warmup", type=float, default=warmup, help=f"share of the {unit} processed before the window")
    ap.add_argument("--stop-at", type=float, default=0.9, help=f"the window ends early at this share of the {unit}")
    ap.add_argument("--out", type=Path, default=HERE / "bench" / "results")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--tree", type=Path, help="source tree of the worker (default: this one)")
    ap.add_argument("--ref", default="7622d03", help="commit extracted into --tree when it does not exist")
    ap.add_argument("--label", default="after")
    ap.add_argument("--batch-events", type=int, 
                    help="producer.batch_max_events (default: 1 with --tree, else the setting)")
    add_window_arguments(ap, "events", warmup=0.1)
    args = ap.parse_args(argv)
    work = Path("/tmp/profile-work") / f"run-{args.label}"
    work.mkdir(parents=True, exist_ok=True)
    created = prepare_tree(args.tree, args.ref)
    try:
        run = profile(args, work)
    finally:
        if created and args.tree is not None:
            shutil.rmtree(args.tree)
    write(args.out, args.label, run)
    w = run["window"]
    log(f"{args.label}: {w['events_per_s']:,.0f} ev/s, worker {w['worker_cpu_us_per_event']:.1f} µs/ev, "
        f"redis {w['redis_cpu_us_per_event']:.1f}, broker {w['broker_cpu_us_per_event']:.1f}, "
        f"lua {w['lua_calls_per_event']:.3f}/ev → {args.out / 'profile.md'}")


if __name__ == "__main__":
    main()
