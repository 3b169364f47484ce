"""The worker's and the trainer's profile, reported: what a profile targets, py-spy stacks summarised, and
the markdown table over every label of a results file (:mod:`bench.profile_worker` measures,
:mod:`bench.profile_trainer` reuses both halves).

>>> stacks = [("to_thread pool (Redis stages)", ["run (a.py:1)", "plan (stream/writers.py:3)"], 30)]
>>> top = summarise(stacks, stacks, events=300, worker_us=50.0)["top_self"][0]  # the worker's 50 µs/event
>>> top["function"], top["share"], top["cpu_us_per_event"]
('plan (stream/writers.py)', 1.0, 50.0)
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import machine
from infra.settings import Settings

RATE_HZ = 100
KEY_FRAMES: dict[str, str] = {
    "Faust Consumer._drain_messages": r"_drain_messages \(",
    "Faust/mode wait_first": r"wait_first \(",
    "Faust take_events (batching)": r"take_events \(",
    "event decode (msgspec wrappers)": r"^(\w+\.)?(_?decode(_record|_event|_batch|_valid|_forwarded\w*)?) \(",
    "stage code (stream/ingest.py)": r"\(stream/ingest\.py",
    "writers (stream/writers.py)": r"\(stream/writers\.py",
    "redis-py Pipeline.execute": r"^(Pipeline\.)?execute \(redis/client\.py",
    "redis-py pack_commands": r"pack_commands? \(",
    "redis-py read_response (reply wait)": r"read_response \(",
    "Faust/aiokafka producer send": r"^(\w+\.)?send\w* \((faust|aiokafka)/",
}
THREAD_ROLES = (("mode/threads.py", "Faust consumer thread (mode ServiceThread)"),
                ("concurrent/futures/thread.py", "to_thread pool (Redis stages)"),
                ("socketserver.py", "/metrics HTTP"), ("MainThread", "MainThread (Faust event loop)"))


@dataclass(frozen=True)
class Target:
    """What is profiled: the /metrics counter of its progress (a line prefix) and its port, the topic whose
    committed offsets cross-check it, how its threads and key frames are named, where its results go."""

    name: str
    unit: str
    counter: str
    port: Callable[[Settings], int]
    topic: Callable[[Settings], str]
    key_frames: dict[str, str]
    thread_roles: tuple[tuple[str, str], ...]
    results: str
    title: str
    module: str


WORKER = Target("worker", "event", "recstream_events_processed_total", lambda s: s.worker.metrics_port,
                lambda s: s.kafka.events_topic, KEY_FRAMES, THREAD_ROLES, "profile",
                "Worker profile: where the time goes", "bench.profile_worker")


# -- stacks -----------------------------------------------------------------------------------------------
Stacks = list[tuple[str, list[str], int]]


def read_stacks(path: Path, roles: tuple[tuple[str, str], ...] = THREAD_ROLES) -> Stacks:
    """py-spy raw lines as (thread role, frames root first, samples)."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        stack, _, count = line.rpartition(" ")
        role = next((r for marker, r in roles if marker in stack), "other")
        frames = stack.split(";")
        out.append((role, frames[1:] if frames[0].startswith("thread (") else frames, int(count)))
    return out


def _fn(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def summarise(cpu: Stacks, wall: Stacks, events: int, worker_us: float,
              key_frames: dict[str, str] = KEY_FRAMES) -> dict[str, Any]:
    """Top-15 self time of the cpu profile, inclusive time of KEY_FRAMES, per thread. cpu µs/event = share of
    the cpu samples × the /proc worker CPU per event (py-spy also counts runnable-but-waiting threads as
    active on a loaded machine); wall µs/event = wall samples × 10 ms / events (thread time, waits included)."""
    total = sum(c for _, _, c in cpu)
    cpu_us, wall_us = worker_us / max(1, total), 1e6 / RATE_HZ / max(1, events)
    self_time: Counter[str] = Counter()
    for _, frames, c in cpu:
        self_time[_fn(frames[-1]) if frames else "?"] += c
    top = [{"function": f, "share": c / max(1, total), "cpu_us_per_event": c * cpu_us}
           for f, c in self_time.most_common(15)]

    def inclusive(stacks: Stacks, pattern: str) -> int:
        rx = re.compile(pattern)
        return sum(c for _, frames, c in stacks if any(rx.search(f) for f in frames))

    keys = {name: {"cpu_us_per_event": inclusive(cpu, rx) * cpu_us, "wall_us_per_event": inclusive(wall, rx) * wall_us}
            for name, rx in key_frames.items()}
    threads: dict[str, dict[str, float]] = {}
    for kind, stacks, us in (("cpu", cpu, cpu_us), ("wall", wall, wall_us)):
        for thread, _, c in stacks:
            threads.setdefault(thread, {"cpu_us_per_event": 0.0, "wall_us_per_event": 0.0})[f"{kind}_us_per_event"] += (
                c * us)
    return {"samples_cpu": total, "samples_wall": sum(c for _, _, c in wall), "top_self": top,
            "key_frames": keys, "threads": threads}


# -- report -----------------------------------------------------------------------------------------------
def rows(target: Target) -> list[tuple[str, str, str]]:
    """The summary rows of ``target``'s table (the JSON keys say ``worker``/``event`` for every target)."""
    name, unit = target.name, target.unit
    return [
        (f"{unit}s/s in the window", "events_per_s", "{:,.0f}"),
        (f"{name} CPU µs/{unit}", "worker_cpu_us_per_event", "{:,.1f}"),
        (f"Redis CPU µs/{unit}", "redis_cpu_us_per_event", "{:,.1f}"),
        (f"broker CPU µs/{unit}", "broker_cpu_us_per_event", "{:,.1f}"),
        (f"Lua calls/{unit}", "lua_calls_per_event", "{:.4f}"),
        (f"Redis usec/{unit} (commandstats, all)", "redis_usec_per_event", "{:,.1f}"),
        (f"{name} CPU (cores)", "worker_cpu_share", "{:.2f}"),
        (f"window s / {unit}s", "window_s", "{:.1f}"),
    ]


def _cell(run: dict[str, Any] | None, key: str, fmt: str) -> str:
    if not run or key not in run["window"]:
        return "–"
    text = fmt.format(run["window"][key])
    return f"{text} / {run['window']['events']:,}" if key == "window_s" else text


def render(data: dict[str, Any], target: Target = WORKER) -> str:
    labels = [x for x in ("before", "after") if x in data["runs"]] + sorted(set(data["runs"]) - {"before", "after"})
    runs = [data["runs"][x] for x in labels]
    unit = target.unit
    lines = [f"# {target.title}", "",
             f"`python -m {target.module}` (see its docstring). CPU from /proc and Redis INFO over the",
             "steady-state window; Redis usec from INFO commandstats (commands run inside Lua are counted in",
             "`evalsha` *and* in their own row); py-spy at 100 Hz, `cpu` = on-CPU samples, `wall` = waits included.",
             "One run per label on a shared 2-core machine: read differences under ~10–15% as noise.", "",
             "| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    lines += ["| " + name + " | " + " | ".join(_cell(r, key, fmt) for r in runs) + " |"
              for name, key, fmt in rows(target)]
    cmds = sorted({c for r in runs for c in r["window"]["commands"]})
    lines += [f"| Redis `{c}` calls / usec per {unit} | " + " | ".join(
        "{calls_per_event:.3f} / {usec_per_event:.1f}".format(**r["window"]["commands"][c])
        if c in r["window"]["commands"] else "–" for r in runs) + " |" for c in cmds]
    for label, r in zip(labels, runs, strict=True):
        w, p = r["window"], r["profile"]
        produced = ", ".join(f"{k}={v}" for k, v in r["produce"].items())
        lines += ["", f"## {label}", "", f"`{r['command']}` — {r['when']}, tree `{r['tree']}`, produced "
                  f"{produced}, loadavg {w['loadavg_start'][0]:.2f} → "
                  f"{w['loadavg_end'][0]:.2f}, py-spy samples cpu {p['samples_cpu']:,} / wall {p['samples_wall']:,}, "
                  f"dead letters {r.get('dead_letters', '–')}", "",
                  f"| # | self-time function (cpu profile) | share | cpu µs/{unit} |", "|---|---|---|---|"]
        lines += [f"| {i} | `{t['function']}` | {t['share']:.1%} | {t['cpu_us_per_event']:.1f} |"
                  for i, t in enumerate(p["top_self"], 1)]
        lines += ["", f"| frame / thread (inclusive) | cpu µs/{unit} | wall µs/{unit} |", "|---|---|---|"]
        lines += [f"| {k} | {v['cpu_us_per_event']:.1f} | {v['wall_us_per_event']:.1f} |"
                  for k, v in p["key_frames"].items()]
        lines += [f"| thread `{k}` | {v['cpu_us_per_event']:.1f} | {v['wall_us_per_event']:.1f} |"
                  for k, v in sorted(p["threads"].items())]
    return "\n".join(lines) + "\n"


def write(out_dir: Path, label: str, run: dict[str, Any], target: Target = WORKER) -> Path:
    """Merge ``run`` as ``label`` into ``<target.results>.json`` and render the markdown beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{target.results}.json"
    data: dict[str, Any] = (json.loads(path.read_text()) if path.exists()
                            else {"benchmark": target.results, "runs": {}})
    data["runs"][label] = run
    data["machine"] = machine()
    path.write_text(json.dumps(data, indent=2) + "\n")
    md = out_dir / f"{target.results}.md"
    md.write_text(render(data, target))
    return md
