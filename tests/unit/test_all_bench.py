"""``recstream bench all``'s report: the goals read from the steps' JSON, the embedded tables and the plots."""

from __future__ import annotations

import json
from pathlib import Path

from bench.all_bench import STEPS, headline, write_report
from bench.all_plots import plot_freshness, plot_reads, plot_throughput

FAM = {"p50_ms": 120.0, "p99_ms": 640.0, "probes": 40, "missed": 0}
RESULTS = {
    "ingest": {"status": "ok", "error": None, "seconds": 60.0, "data": {"variants": {
        "aiokafka-batched": {"median_eps": 150_000.0}, "worker-1p": {"median_eps": 14_000.0},
        "worker-2p": {"median_eps": 21_000.0}}}},
    "freshness": {"status": "ok", "error": None, "seconds": 90.0, "data": {"rows": [
        {"fraction": 0.25, "target_eps": 3500.0, "achieved_eps": 3490.0, "families": {"stats": {**FAM, "p99_ms": 300}}},
        {"fraction": 5000 / 14000, "target_eps": 5000.0, "achieved_eps": 4990.0,
         "families": {"stats": FAM, "samples": {**FAM, "probes": 0, "p99_ms": 900.0},
                      "embeddings": {**FAM, "p99_ms": 6_500.0}}}]}},
    "learning": {"status": "failed", "error": "RuntimeError: no broker", "seconds": 3.0, "data": None},
}


def test_headline_reads_each_goal_from_its_step() -> None:
    goals = {g: (v, met(v) if v is not None else None) for g, v, _, met in headline(RESULTS)}
    values = list(goals.values())
    assert values[0] == (14_000.0, False) and values[1] == (21_000.0, True)
    # the row at 5,000 ev/s: the worst feature family with probes (samples had none), not the embeddings,
    # which are held to their own goal, the publish period (5 s) + 2 s
    assert values[2] == (640.0, False)
    assert values[3] == (6_500.0, True)
    assert values[4] == (None, None)  # the learning step failed: not measured


def test_the_report_embeds_each_table_and_says_what_failed(tmp_path: Path) -> None:
    (tmp_path / "all").mkdir()
    (tmp_path / "all" / "ingest.md").write_text("# ingest\n\nwhen\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    plots = [p for p in (plot_throughput(RESULTS, tmp_path), plot_freshness(RESULTS, tmp_path),
                         plot_reads(RESULTS, tmp_path)) if p]
    assert plots == ["all_throughput.png", "all_freshness.png"]  # no read data: no read plot
    assert all((tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    text = write_report(tmp_path, "quick", RESULTS, plots).read_text()
    assert "| 1 | 2 |" in text and "not measured" in text and "failed: RuntimeError: no broker" in text
    assert "![all_freshness.png](all_freshness.png)" in text
    summary = json.loads((tmp_path / "all.json").read_text())
    assert [g["met"] for g in summary["goals"]] == [False, True, False, True, False]
    assert set(summary["steps"]) == {"ingest", "freshness", "learning"} <= {s.name for s in STEPS}


def test_an_only_run_keeps_the_other_steps_of_the_previous_run(tmp_path: Path) -> None:
    from bench.all_bench import earlier_results

    (tmp_path / "all").mkdir()
    write_report(tmp_path, "full", RESULTS, [])
    for name in ("ingest", "learning"):
        (tmp_path / "all" / f"{name}.json").write_text(json.dumps({"when": "T", "variants": {}}))
    kept = earlier_results(tmp_path, exclude={"freshness"})
    assert set(kept) == {"ingest"}  # freshness runs again; learning had failed; no JSON for the others
    assert kept["ingest"]["status"] == "ok (earlier run, T)" and kept["ingest"]["data"]["when"] == "T"
