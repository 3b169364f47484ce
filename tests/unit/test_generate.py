"""The synthetic generator: determinism, realism targets, metadata consistency, file output."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from filters.events import Event, decode_event, decode_item, encode
from infra.errors import InputError
from recstream.generate import (
    ACTION_RATES,
    DAY_MS,
    GeneratorConfig,
    GenStats,
    World,
    generate_events,
    generate_items,
    write_dataset,
)

START = 1_700_000_000_000  # fixed: the output is a function of (config, seed, start)
CFG = GeneratorConfig(users=300, items=800, days=3, events=60_000, seed=11, start_ms=START)


@pytest.fixture(scope="module")
def generated() -> tuple[list[Event], GenStats]:
    stats = GenStats()
    return list(generate_events(CFG, stats=stats)), stats


def test_deterministic_for_a_seed(generated: tuple[list[Event], GenStats]) -> None:
    small = GeneratorConfig(users=50, items=100, days=1, events=5000, seed=3, start_ms=START)
    a = [encode(e) for e in generate_events(small)]
    assert a == [encode(e) for e in generate_events(small)]
    other = GeneratorConfig(users=50, items=100, days=1, events=5000, seed=4, start_ms=START)
    assert a != [encode(e) for e in generate_events(other)]
    assert list(generate_items(small)) == list(generate_items(small))


def test_size_and_validity(generated: tuple[list[Event], GenStats]) -> None:
    events, stats = generated
    assert 0.9 * 60_000 < len(events) < 1.1 * 60_000
    assert stats.events == len(events)
    assert all(decode_event(encode(e)) == e for e in events[:5000])
    assert all(e.ts >= START for e in events)
    assert max(e.ts for e in events) < CFG.end_ms + DAY_MS  # actions may trail the end a little


def test_ctr_and_conditional_actions(generated: tuple[list[Event], GenStats]) -> None:
    events, stats = generated
    first = {e.event_id: e for e in events}  # without duplicate deliveries
    types: Counter[str] = Counter(e.type for e in first.values())
    assert 0.03 <= types["click"] / types["impression"] <= 0.05
    assert types == stats.types
    clicks = {(e.request_id, e.position): e for e in first.values() if e.type == "click"}
    impressions = {(e.request_id, e.position): e for e in first.values() if e.type == "impression"}
    for e in first.values():
        if e.type == "impression":
            continue
        shown = impressions[(e.request_id, e.position)]
        assert (shown.user_id, shown.item_id) == (e.user_id, e.item_id) and e.ts > shown.ts
        if e.type != "click":  # like/collect/share/comment only after a click on the same slot
            click = clicks[(e.request_id, e.position)]
            assert e.ts > click.ts
    for action, rate in ACTION_RATES.items():
        assert 0.4 * rate < types[action] / types["click"] < 1.8 * rate, action


def test_duplicates_and_late_events(generated: tuple[list[Event], GenStats]) -> None:
    events, stats = generated
    counts = Counter(e.event_id for e in events)
    dups = sum(n - 1 for n in counts.values())
    assert dups == stats.duplicates and 0.002 * len(events) < dups < 0.01 * len(events)
    by_id: dict[str, Event] = {}
    for e in events:
        if e.event_id in by_id:
            assert by_id[e.event_id] == e  # exact duplicate delivery
        by_id[e.event_id] = e
    # late: emitted after events that are > 2 minutes newer
    newest = 0
    late = 0
    for e in events:
        if e.ts < newest - 2 * 60_000:
            late += 1
        newest = max(newest, e.ts)
    assert 0.003 * len(events) < late <= stats.late + stats.duplicates
    assert 0.005 * len(events) < stats.late < 0.02 * len(events)


def test_metadata_consistency(generated: tuple[list[Event], GenStats]) -> None:
    events, _ = generated
    items = {m.item_id: m for m in generate_items(CFG)}
    assert len(items) == CFG.items
    assert all(decode_item(encode(m)) == m for m in items.values())
    for e in events:
        meta = items[e.item_id]
        assert e.category in (None, meta.category)
        assert e.author_id in (None, meta.author_id)
        assert meta.publish_ts is not None and e.ts >= meta.publish_ts  # never shown before published
    missing = sum(e.category is None for e in events) / len(events)
    assert 0.05 < missing < 0.3  # most events carry category, not all: enrichment matters


def test_realism_shapes(generated: tuple[list[Event], GenStats]) -> None:
    events, _ = generated
    imps = [e for e in events if e.type == "impression"]
    popularity = sorted(Counter(e.item_id for e in imps).values(), reverse=True)
    top = sum(popularity[: len(popularity) // 100 or 1]) / len(imps)
    assert top > 0.1  # Zipf: the top 1 % of items gets well over 1 % of impressions
    hours = Counter((e.ts // 3_600_000) % 24 for e in imps)
    assert hours[20] + hours[21] > 3 * (hours[3] + hours[4])  # evening peak, night trough
    world = World(CFG)
    assert set(world.categories) == {m.category for m in generate_items(CFG, world)}


def test_write_dataset(tmp_path: Path) -> None:
    cfg = GeneratorConfig(users=20, items=30, days=1, events=3000, seed=5, start_ms=START)
    ticks: list[int] = []
    stats = write_dataset(cfg, tmp_path / "out", progress=ticks.append)
    lines = (tmp_path / "out" / "events.jsonl").read_bytes().splitlines()
    assert len(lines) == stats.events == sum(ticks)
    assert [decode_event(x) for x in lines] == list(generate_events(cfg))
    assert len((tmp_path / "out" / "items.jsonl").read_text().splitlines()) == 30 == stats.items
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 5 and manifest["events"] == stats.events


@pytest.mark.parametrize("bad", [{"users": 0}, {"days": 0}, {"ctr": 0.7}, {"slate_min": 5, "slate_max": 2}])
def test_bad_config(bad: dict[str, object]) -> None:
    with pytest.raises(InputError, match="generate:"):
        GeneratorConfig(**bad)  # type: ignore[arg-type]


def test_tiny_worlds() -> None:
    cfg = GeneratorConfig(users=1, items=1, days=0.1, events=50, seed=0, start_ms=START)
    events = list(generate_events(cfg))
    assert events and {e.item_id for e in events} == {"i0"}
