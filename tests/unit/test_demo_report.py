"""The demo's report: data in, index.html + PNG plots out (recstream/demo_report.py), and the story's
pure choices (recstream/demo_story.py)."""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from filters.labels import Sample
from infra.settings import LearningSettings
from online_learning.learner import Learner
from recstream.demo_live import FamilyFreshness, Tick
from recstream.demo_report import CHROMIUM, ReportData, blank, build_report, screenshot, windowed
from recstream.demo_story import Curves, Story, learner_ranking, pick_category, story_events


def _story(after_items: tuple[str, ...], published: bool = True) -> Story:
    before = tuple((f"i{k}", 1.0 - k / 100) for k in range(10))
    after = tuple((item, 2.0 - k / 100) for k, item in enumerate(after_items))
    categories = {i: "food" for i, _ in before} | {i: "pets" if i.startswith("p") else "food" for i, _ in after}
    return Story("u7", "pets", 0, ("p100", "p101"), before, after, categories, 6.5, published, 0.05)


def _data(story: Story | None = None) -> ReportData:
    ticks = [Tick(5.0 * k, phase, 1000.0 * k, 10 - k, 0.5, 2.0, {}, 0.01 * k, None)
             for k, phase in enumerate(["replay", "replay", "live", "live"])]
    ticks.append(Tick(25.0, "live", None, None, None, None, {"exposure": 0.2}, None, None))  # nothing read
    rng = np.random.default_rng(0)
    curves = Curves(np.linspace(0, 30, 400), {"frozen": (rng.random(400) < 0.02).astype(float),
                                              "online": (rng.random(400) < 0.10).astype(float)},
                    {"frozen": rng.random(400) / 10, "online": rng.random(400) / 5}, {"frozen": None, "online": None})
    return ReportData([("replayed", "100 events")], ticks, {"exposure": [0.1, 0.2, 0.15], "embeddings": [5.0, 6.0]},
                      {"exposure": FamilyFreshness(3, 0, 0.15, 0.2)}, curves, story or _story(("p1", "i2", "p3")))


def test_report_writes_page_and_non_blank_plots(tmp_path: Path) -> None:
    data = _data()
    page = build_report(data, tmp_path)
    text = page.read_text()
    for png in ("learning.png", "freshness.png", "throughput.png"):
        assert f'src="{png}"' in text
        with Image.open(tmp_path / png) as im:
            assert im.format == "PNG" and im.width > 300
        assert not blank(tmp_path / png)
    assert "u7" in text and "p100, p101" in text
    assert html.escape("learning visible: 2/3 of the new top-3 are pets items (before: 0/10)") in text
    assert data.curves is not None
    for regime in ("frozen", "online"):  # each regime's recall@10, from its own hits
        assert f"<td>{regime}</td><td>{data.curves.hits[regime].mean():.4f}</td>" in text


def test_report_says_what_is_missing(tmp_path: Path) -> None:
    page = build_report(ReportData(), tmp_path)
    text = page.read_text()
    assert "no before/after story" in text and "no live positives" in text and "no live line" in text
    assert not list(tmp_path.glob("*.png"))


def test_report_escapes_text(tmp_path: Path) -> None:
    page = build_report(ReportData(facts=[("<b>", "a & b")]), tmp_path)
    assert "&lt;b&gt;" in page.read_text() and "a &amp; b" in page.read_text()


@pytest.mark.parametrize(("after", "published", "verdict"), [
    (("p1", "i2"), True, "learning visible: 1/2"),
    (("i1", "i2"), True, "weak effect: 0/2 pets items after vs 0/10 before"),
    (("p1",), False, "not published in time"),
])
def test_story_verdict_is_honest(after: tuple[str, ...], published: bool, verdict: str) -> None:
    assert _story(after, published).verdict().startswith(verdict)


def test_story_flags_clicked_items_left_in_the_list() -> None:
    story = _story(("p100", "i1"))
    assert story.leaked == ["p100"] and story.changed


def test_pick_category_prefers_never_clicked_then_largest() -> None:
    catalogue = {"a": "food", "b": "pets", "c": "pets", "d": "tech"}
    assert pick_category({"food": 4}, catalogue) == "pets"
    assert pick_category({"food": 4, "pets": 1, "tech": 2}, catalogue) == "pets"
    assert pick_category({"food": 1, "pets": 3, "tech": 2}, catalogue) == "food"


def test_story_events_pair_each_impression_with_a_later_click() -> None:
    events = story_events("u1", ["i1", "i2"], "pets", 5000)
    assert [(e.type, e.item_id) for e in events] == [("impression", "i1"), ("click", "i1"),
                                                     ("impression", "i2"), ("click", "i2")]
    assert len({e.event_id for e in events}) == 4 and {e.request_id for e in events} == {"demo-story-5000"}
    assert all(e.category == "pets" and e.user_id == "u1" for e in events)


def test_windowed_mean() -> None:
    assert windowed(np.ones(3), 4).size == 0
    assert windowed(np.array([0.0, 1.0, 1.0]), 2).tolist() == [0.5, 1.0]


def test_blank_detects_a_single_colour(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30), "white").save(tmp_path / "white.png")
    drawn = Image.new("RGB", (40, 30), "white")
    drawn.putpixel((3, 4), (200, 0, 0))
    drawn.save(tmp_path / "drawn.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert blank(tmp_path / "white.png") and blank(tmp_path / "broken.png")
    assert not blank(tmp_path / "drawn.png")


def test_screenshot_without_chromium_says_why(tmp_path: Path) -> None:
    problem = screenshot(tmp_path / "index.html", tmp_path / "s.png", chromium=tmp_path / "no-chromium")
    assert problem is not None and "not installed" in problem


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is installed by `make demo` (infra/bootstrap.sh)")
def test_screenshot_renders_the_report(tmp_path: Path) -> None:
    page = build_report(_data(), tmp_path)
    assert screenshot(page, tmp_path / "s.png") is None
    assert not blank(tmp_path / "s.png")


def test_story_verdict_reports_the_replica_with_and_without_the_clicks(tmp_path: Path) -> None:
    story = dataclasses.replace(_story(("p1", "i2")), replica=("p7", "p8", "i3"), control=("i3", "p7", "i4"),
                                categories={**_story(("p1", "i2")).categories, "p7": "pets", "p8": "pets",
                                            "i3": "food", "i4": "food"})
    assert story.verdict().endswith("2/10 with the clicks (best pets item at #1), 1/10 without them (#2)")
    text = build_report(ReportData(story=story), tmp_path).read_text()
    assert "2 with the clicks (#1), 1 without them (#2)" in text


def test_learner_ranking_orders_candidates_by_the_learners_scores() -> None:
    learner = Learner.fresh(LearningSettings(max_users=10, max_items=20, max_categories=4, dim=8, hidden=8))
    learner.train([Sample(kind="positive", sample_id=f"s{k}", user_id="u1", item_id=f"i{k % 3}", request_id=None,
                          impression_ts=0, ts=1, category="c", author_id=None, history=[], alpha=1.0)
                   for k in range(6)])  # own rows for i0..i2: distinct scores
    candidates = [f"i{k}" for k in range(6)]
    ranking = learner_ranking(learner, "u1", ["i1"], candidates)
    probes = [Sample(kind="impression", sample_id="", user_id="u1", item_id=i, request_id=None, impression_ts=0,
                     ts=0, category=learner.item_category.get(i, ""), author_id=None, history=["i1"], alpha=1.0)
              for i in candidates]
    scores = dict(zip(candidates, learner.score_impressions(probes).tolist(), strict=True))
    assert sorted(ranking) == sorted(candidates)
    assert [scores[i] for i in ranking] == sorted(scores.values(), reverse=True)


def test_tick_line_shows_what_could_not_be_read() -> None:
    line = Tick(25.0, "live", None, None, None, None, {}, None, None).line()
    assert line == "[live     25 s] - ev/s  lag - rec (-)  canary -  published -  recall@10 -  auc -"
