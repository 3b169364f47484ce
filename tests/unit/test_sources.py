"""JSONL and MIND readers, error reporting and time shifting (small files written here, no /work/shared)."""

from __future__ import annotations

from pathlib import Path

import pytest

from filters.events import Event, decode_event, encode
from infra.errors import InputError
from recstream.sources import (
    Rejects,
    load_news_categories,
    mind_news_items,
    parse_mind_time,
    read_jsonl,
    read_jsonl_items,
    read_jsonl_valid,
    read_mind,
    scan,
    shift_to_now,
)

GOOD = '{"event_id":"e%d","type":"click","user_id":"u1","item_id":"i9","ts":%d}'


def ev(i: int, ts: int) -> Event:
    return Event(event_id=f"e{i}", type="impression", user_id="u", item_id="i", ts=ts)


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    p = tmp_path / "events.jsonl"
    p.write_text("\n".join([
        GOOD % (1, 1000),
        "",  # blank: ignored, not an error
        "{not json",
        GOOD % (2, 2000),
        '{"event_id":"e3","type":"buy","user_id":"u1","item_id":"i9","ts":1}',
        '{"event_id":"e4","type":"click","user_id":"u1","item_id":"i9","ts":1700000000}',  # fine (ms)
        '{"event_id":"e5","type":"click","user_id":"u1","item_id":"i9","ts":1700000000000000}',  # µs
        GOOD % (6, 3000) + "\r",
    ]) + "\n")
    return p


def test_jsonl_skip_and_report(jsonl: Path) -> None:
    rejects = Rejects()
    events = list(read_jsonl(jsonl, on_error=rejects))
    assert [e.event_id for e in events] == ["e1", "e2", "e4", "e6"]
    assert rejects.total == 3
    assert rejects.counts == {"invalid_json": 1, "invalid_field": 2}
    assert rejects.lines == {"invalid_json": [3], "invalid_field": [5, 7]}
    assert rejects.first["invalid_field"].line == 5 and "buy" in rejects.first["invalid_field"].detail
    assert "invalid_field ×2 (lines 5, 7)" in rejects.summary()


def test_jsonl_strict_raises_with_line_number(jsonl: Path) -> None:
    got: list[str] = []
    with pytest.raises(InputError, match=r"events\.jsonl:3: invalid_json"):
        for e in read_jsonl(jsonl):
            got.append(e.event_id)
    assert got == ["e1"]  # stops at the bad line


def test_jsonl_valid_and_items(tmp_path: Path) -> None:
    p = tmp_path / "items.jsonl"
    p.write_text('{"item_id":"i1","category":"food","publish_ts":5}\n{"item_id":""}\n{"item_id":"i2"}\n')
    rejects = Rejects()
    assert [m.item_id for m in read_jsonl_items(p, on_error=rejects)] == ["i1", "i2"]
    assert rejects.lines == {"invalid_field": [2]}
    q = tmp_path / "e.jsonl"
    q.write_text(GOOD % (1, 5) + "\nxx\n")
    assert [e.event_id for e in read_jsonl_valid(q)] == ["e1"]


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        list(read_jsonl(tmp_path / "nope.jsonl"))
    with pytest.raises(InputError, match="cannot read"):
        list(read_mind(tmp_path / "nope.tsv"))


def test_roundtrip_of_read_events(jsonl: Path) -> None:
    for e in read_jsonl(jsonl, on_error=Rejects()):
        assert decode_event(encode(e)) == e


# -- MIND --------------------------------------------------------------------------------------------
ROWS = [
    "1\tU10\t11/15/2019 8:55:22 AM\tN1 N2\tN55-0 N19-1 N33-0 N7-1",
    "2\tU11\t11/15/2019 12:05:00 PM\t\tN19-0 N40-0",  # empty history is fine
    "3\tU10\t11/14/2019 11:59:59 PM\tN1\tN19-1",
]


def write_mind(d: Path, rows: list[str], news: bool = True) -> Path:
    (d / "behaviors.tsv").write_text("\n".join(rows) + "\n")
    if news:
        (d / "news.tsv").write_text("N19\tsports\tgolf\tTitle\tAbstract\turl\t[]\t[]\n"
                                    "N55\tnews\tnewsus\tT\tA\tu\t[]\t[]\n")
    return d / "behaviors.tsv"


def test_mind_counts_ids_and_fields(tmp_path: Path) -> None:
    events = list(read_mind(write_mind(tmp_path, ROWS)))
    imps = [e for e in events if e.type == "impression"]
    clicks = [e for e in events if e.type == "click"]
    assert (len(imps), len(clicks)) == (4 + 2 + 1, 2 + 0 + 1)
    row1 = [e for e in events if e.request_id == "1"]
    assert [(e.type, e.item_id, e.position) for e in row1] == [
        ("impression", "N55", 0), ("impression", "N19", 1), ("impression", "N33", 2), ("impression", "N7", 3),
        ("click", "N19", 1), ("click", "N7", 3)]
    assert row1[1].event_id == "1:N19:impression" and row1[4].event_id == "1:N19:click"
    assert {e.ts for e in row1} == {parse_mind_time("11/15/2019 8:55:22 AM")} == {1573808122000}
    assert len({e.event_id for e in events}) == len(events)
    assert all(e.user_id == "U10" for e in row1)
    cats = {e.item_id: e.category for e in events}
    assert cats == {"N55": "news", "N19": "sports", "N33": None, "N7": None, "N40": None}
    # stable: reading again gives the same events
    assert list(read_mind(tmp_path / "behaviors.tsv")) == events


def test_mind_explicit_news_path_and_no_news(tmp_path: Path) -> None:
    b = write_mind(tmp_path, ROWS, news=False)
    assert all(e.category is None for e in read_mind(b))
    other = tmp_path / "elsewhere.tsv"
    other.write_text("N7\tfood\tx\tt\n")
    assert {e.category for e in read_mind(b, other) if e.item_id == "N7"} == {"food"}
    assert load_news_categories(other) == {"N7": "food"}
    assert [(m.item_id, m.category) for m in mind_news_items(other)] == [("N7", "food")]


def test_mind_repeated_item_keeps_ids_unique(tmp_path: Path) -> None:
    b = write_mind(tmp_path, ["9\tU1\t11/15/2019 8:55:22 AM\t\tN1-1 N2-0 N1-1"], news=False)
    ids = [e.event_id for e in read_mind(b)]
    assert ids == ["9:N1:impression", "9:N2:impression", "9:N1#2:impression", "9:N1:click", "9:N1#2:click"]


def test_mind_unlabelled_test_split(tmp_path: Path) -> None:
    b = write_mind(tmp_path, ["9\tU1\t11/15/2019 8:55:22 AM\t\tN1 N2"], news=False)
    assert [e.type for e in read_mind(b)] == ["impression", "impression"]


@pytest.mark.parametrize(("row", "reason"), [
    ("4\tU1\t11/15/2019 8:55:22 AM\tN1", "bad_columns"),
    ("4\tU1\t2019-11-15 08:55:22\tN1\tN2-0", "bad_time"),
    ("4\tU1\t11/15/2019 8:55:22 AM\tN1\tN2-0 N3-x", "bad_impressions"),
    ("4\tU1\t11/15/2019 8:55:22 AM\tN1\t", "bad_impressions"),
    ("4\t\t11/15/2019 8:55:22 AM\tN1\tN2-0", "bad_id"),
])
def test_mind_bad_rows(tmp_path: Path, row: str, reason: str) -> None:
    b = write_mind(tmp_path, [ROWS[0], row, ROWS[2]])
    rejects = Rejects()
    events = list(read_mind(b, on_error=rejects))
    assert {e.request_id for e in events} == {"1", "3"}  # the bad row is skipped as a whole
    assert rejects.counts == {reason: 1} and rejects.lines == {reason: [2]}
    with pytest.raises(InputError, match=rf"behaviors\.tsv:2: {reason}"):
        list(read_mind(b))


# -- shifting ----------------------------------------------------------------------------------------
def test_scan_and_shift() -> None:
    evs = [ev(0, 100), ev(1, 500), ev(2, 300)]
    assert scan(evs) == (3, 500)
    assert scan([]) == (0, None)
    assert [e.ts for e in shift_to_now(evs, 10_000)] == [9_600, 10_000, 9_800]
    assert [e.ts for e in shift_to_now(iter(evs), 10_000)] == [9_600, 10_000, 9_800]  # one-shot iterator
    assert list(shift_to_now([], 5)) == []
    shifted = next(shift_to_now(evs, 10_000))
    assert shifted.event_id == "e0" and shifted.user_id == "u"


def test_shift_file_takes_two_passes(jsonl: Path) -> None:
    opened = []

    def source() -> list[Event]:
        opened.append(1)
        return list(read_jsonl(jsonl, on_error=Rejects()))

    out = list(shift_to_now(source, 1_800_000_000_000))
    assert len(opened) == 2
    assert max(e.ts for e in out) == 1_800_000_000_000
    orig = source()
    assert [b.ts - a.ts for a, b in zip(orig, out, strict=True)] == [1_800_000_000_000 - 1_700_000_000] * 4


def test_shift_negative_is_an_error() -> None:
    with pytest.raises(InputError, match="negative"):
        list(shift_to_now([ev(0, 0), ev(1, 100)], 50))
