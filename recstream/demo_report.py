"""The demo's HTML report: data in, ``index.html`` + PNG plots (matplotlib) out; and its render check.

:func:`build_report` writes, into one directory:

- ``throughput.png``: events/s the worker processed, lag and the trainer's prequential recall@10 over
  the demo's wall time (one :class:`~recstream.demo_live.Tick` every few seconds), phases shaded;
- ``freshness.png``: a histogram of the canary's produce → readable delays per feature family;
- ``learning.png``: recall@10 over the live phase, online vs frozen (:class:`~recstream.demo_story.Curves`);
- ``index.html``: the facts, the freshness table, the before/after table and the three plots.

:func:`screenshot` renders a page in headless Chromium and :func:`blank` tells whether the PNG it made
is a single colour (the page did not render).
"""

from __future__ import annotations

import html
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recstream.demo_live import FamilyFreshness, Tick
from recstream.demo_story import REGIMES, TOP_K, Curves, Story

__all__ = ["CHROMIUM", "ReportData", "blank", "build_report", "screenshot", "windowed"]

CHROMIUM = Path("/usr/bin/chromium")
_CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync")


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows (each part optional: a missing one is said so on the page)."""

    facts: Sequence[tuple[str, str]] = ()
    ticks: Sequence[Tick] = ()
    delays: Mapping[str, Sequence[float]] = field(default_factory=dict)
    freshness: Mapping[str, FamilyFreshness] = field(default_factory=dict)
    curves: Curves | None = None
    story: Story | None = None
    notes: Sequence[str] = ()


def windowed(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each run of ``window`` consecutive values (empty when there are fewer).

    >>> windowed(np.array([1.0, 0.0, 1.0, 1.0]), 2)
    array([0.5, 0.5, 1. ])
    """
    if window < 1 or values.size < window:
        return np.zeros(0)
    return np.convolve(values, np.ones(window) / window, mode="valid")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _shade_phases(ax: Any, ticks: Sequence[Tick]) -> None:
    colours = {"replay": "#dde8f5", "live": "#e1f2e1"}
    for k, tick in enumerate(ticks):
        start = ticks[k - 1].t_s if k else 0.0
        ax.axvspan(start, tick.t_s, color=colours.get(tick.phase, "#eeeeee"), linewidth=0)


def plot_throughput(ticks: Sequence[Tick], path: Path) -> None:
    """Events/s, lag and the trainer's recall@10 per tick over wall time (phases shaded)."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True)
    t = [x.t_s for x in ticks]
    def series(values: Sequence[float | None]) -> list[float]:
        return [np.nan if v is None else v for v in values]

    panels = ((axes[0], series([x.events_s for x in ticks]), "events/s processed"),
              (axes[1], series([x.lag for x in ticks]), "lag (records)"),
              (axes[2], series([x.recall for x in ticks]), "trainer recall@10"))
    for ax, values, label in panels:
        _shade_phases(ax, ticks)
        ax.plot(t, values, marker="o", markersize=3, color="#1f5fa8")
        ax.set_ylabel(label)
    phases = " → ".join(dict.fromkeys(x.phase for x in ticks))
    axes[0].set_title(f"throughput, lag, trainer's prequential recall (phases: {phases})")
    axes[2].set_xlabel("seconds since the replay started")
    _save(fig, path)


def plot_freshness(delays: Mapping[str, Sequence[float]], path: Path) -> None:
    """One histogram of produce → readable delays (ms) per family, sharing the bins."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    every = [d * 1000 for ds in delays.values() for d in ds]
    bins = np.linspace(0, max(every) * 1.05, 30) if every else 10
    for family, ds in delays.items():
        ax.hist([d * 1000 for d in ds], bins=bins, histtype="step", linewidth=2, label=f"{family} ({len(ds)})")
    ax.set(xlabel="produce → readable (ms)", ylabel="canary probes", title="freshness under live load, per family")
    ax.legend()
    _save(fig, path)


def plot_learning(curves: Curves, path: Path) -> None:
    """recall@10 over a sliding window of live positives, per regime, over event time."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    window = max(20, min(500, curves.seconds.size // 10))
    for regime in REGIMES:
        ax.plot(curves.seconds[window - 1:], windowed(curves.hits[regime], window), label=regime)
    ax.set(xlabel="event time (s since the live phase started)", ylabel=f"recall@{TOP_K}",
           title=f"online vs frozen: recall@{TOP_K} over a sliding window of {window} live positives")
    ax.legend()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- HTML ----------------------------------------------------------------------------------------
def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table (no header row when ``head`` is empty), every cell escaped."""
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{f'<tr>{cells}</tr>' if cells else ''}{body}</table>"


def story_html(story: Story) -> str:
    """The before/after table (rank, item, category, score; items of the story's category marked)."""
    def cell(ranked: Sequence[tuple[str, float]], k: int) -> list[object]:
        if k >= len(ranked):
            return ["", "", ""]
        item, score = ranked[k]
        category = story.categories.get(item, "?")
        return [item, category + (" ★" if category == story.category else ""), f"{score:.2f}"]

    rows = [[k + 1, *cell(story.before, k), *cell(story.after, k)]
            for k in range(max(len(story.before), len(story.after)))]
    table = _table(["#", "before: item", "category", "score", "after: item", "category", "score"], rows)
    facts = [("user", story.user), ("new category (★)", f"{story.category} (clicks before: {story.clicks_before})"),
             ("shown + clicked", ", ".join(story.clicked)), ("published and filtered after", f"{story.waited_s:.1f} s"),
             ("list changed", "yes" if story.changed else "no"),
             ("clicked items still recommended", ", ".join(story.leaked) or "none (exposure filter)"),
             (f"{story.category} items in top-{TOP_K}",
              f"{story.in_category(story.before)} before → {story.in_category(story.after)} after")]
    if story.replica:
        facts.append((f"{story.category} items in the top-{TOP_K} of the trainer's recipe replayed on the live "
                      "samples (best rank)", f"{story.in_category(story.replica)} with the clicks "
                      f"(#{story.best_rank(story.replica)}), {story.in_category(story.control)} without them "
                      f"(#{story.best_rank(story.control)})"))
    return _table([], facts) + f"<p class=verdict>{html.escape(story.verdict())}</p>" + table


def _learning_html(curves: Curves) -> str:
    rows = [[r, _fmt(curves.mean("hits", r)), _fmt(curves.mean("rr", r)), _fmt(curves.auc.get(r))] for r in REGIMES]
    note = (f"{curves.seconds.size:,} live positives, {curves.impressions:,} live impression samples "
            "(an impression sample goes out when its 30-minute click window closes: few or none in the live phase)")
    return _table(["regime", f"recall@{TOP_K}", "MRR", "AUC"], rows) + f"<p>{html.escape(note)}</p>"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


_STYLE = ("body{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}table{border-collapse:collapse;"
          "margin:8px 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}th{background:#eef}"
          "img{max-width:100%;border:1px solid #ddd}.verdict{font-weight:bold}")


def build_report(data: ReportData, out_dir: Path) -> Path:
    """Write the plots and ``index.html`` into ``out_dir``; returns the page's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = ["<h1>recstream demo</h1>", _table([], data.facts) if data.facts else ""]
    parts += [f"<p>{html.escape(n)}</p>" for n in data.notes]
    parts.append("<h2>Before / after: one user's top-10</h2>")
    parts.append(story_html(data.story) if data.story else "<p>(no before/after story in this run)</p>")
    parts.append(f"<h2>Learning: online vs frozen at the start of the live phase (recall@{TOP_K})</h2>")
    if data.curves is not None and data.curves.seconds.size:
        plot_learning(data.curves, out_dir / "learning.png")
        parts += [_learning_html(data.curves), '<img src="learning.png" alt="online vs frozen">']
    else:
        parts.append("<p>(no live positives to evaluate)</p>")
    parts.append("<h2>Freshness under live load (canary, produce → readable)</h2>")
    if data.freshness:
        rows = [[f, x.probes, f"{x.p50_s * 1000:.0f}", f"{x.p99_s * 1000:.0f}", x.misses]
                for f, x in data.freshness.items()]
        parts.append(_table(["family", "probes", "p50 ms", "p99 ms", "misses"], rows))
    if any(data.delays.values()):
        plot_freshness(data.delays, out_dir / "freshness.png")
        parts.append('<img src="freshness.png" alt="freshness histogram">')
    else:
        parts.append("<p>(the canary finished no round under load)</p>")
    parts.append("<h2>Throughput, lag and the trainer's own prequential recall over time</h2>")
    if data.ticks:
        plot_throughput(data.ticks, out_dir / "throughput.png")
        parts.append('<img src="throughput.png" alt="throughput over time">')
    else:
        parts.append("<p>(no live line was recorded)</p>")
    page = out_dir / "index.html"
    page.write_text(f"<!doctype html><html><head><meta charset=utf-8><title>recstream demo</title>"
                    f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    return page


# --- the render check ------------------------------------------------------------------------------
def blank(png: Path) -> bool:
    """True if the image is a single colour (or unreadable): nothing rendered."""
    from PIL import Image

    try:
        with Image.open(png) as im:
            bands: Any = im.convert("RGB").getextrema()  # ((min, max) per band)
            return all(lo == hi for lo, hi in bands)
    except OSError:
        return True


def screenshot(page: Path, png: Path, chromium: Path = CHROMIUM, timeout_s: float = 90.0) -> str | None:
    """Render ``page`` in headless Chromium (a new profile) into ``png``; None when it rendered, else why not."""
    if not chromium.exists():
        return f"{chromium} is not installed (make demo installs Debian's chromium package)"
    with tempfile.TemporaryDirectory(prefix="recstream-chromium-") as profile:
        cmd = [str(chromium), *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
               "--window-size=1280,2000", page.resolve().as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"chromium did not finish: {exc}"
    if not png.exists():
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return f"chromium wrote no screenshot (exit {done.returncode}: {tail[0]})"
    return "the screenshot is blank (a single colour)" if blank(png) else None
