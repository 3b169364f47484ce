"""Readers that turn files into validated :class:`~filters.events.Event` streams.

* :func:`read_jsonl` / :func:`read_jsonl_items` — one JSON object per line (the wire format);
* :func:`read_mind` — Microsoft MIND ``behaviors.tsv`` (+ ``news.tsv`` for categories);
* :func:`shift_to_now` — move a historical stream so that its newest event happens "now".

Bad input is never silently dropped. Every reader takes ``on_error``: ``None`` (the default) raises
:class:`~infra.errors.InputError` naming the file and line; a callable receives a :class:`BadRecord` and
the reader skips the line. :class:`Rejects` is such a callable that counts reasons and keeps the first
line numbers for a summary.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "ev.jsonl"
>>> _ = p.write_text('{"event_id":"e1","type":"click","user_id":"u","item_id":"i","ts":5}\\nnot json\\n')
>>> rejects = Rejects()
>>> [e.event_id for e in read_jsonl(p, on_error=rejects)], rejects.summary()
(['e1'], 'invalid_json ×1 (line 2)')
>>> list(read_jsonl(p))
Traceback (most recent call last):
...
infra.errors.InputError: ...ev.jsonl:2: invalid_json: ...
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import msgspec

from filters.events import Event, ItemMeta, decode_event, decode_item
from infra.errors import EventValidationError, InputError

__all__ = [
    "BadRecord",
    "ErrorHandler",
    "Rejects",
    "load_news_categories",
    "mind_news_items",
    "parse_mind_time",
    "read_jsonl",
    "read_jsonl_items",
    "read_jsonl_valid",
    "read_mind",
    "scan",
    "shift_to_now",
]

MIND_TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
_IDENT = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class BadRecord:
    """One unusable input line: where it is and why (``reason`` is a short code)."""

    path: str
    line: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}: {self.detail}"


ErrorHandler = Callable[[BadRecord], None]


class Rejects:
    """An ``on_error`` handler that counts rejected lines per reason and keeps the first line numbers.

    >>> r = Rejects(keep=2)
    >>> for n in (3, 7, 9):
    ...     r(BadRecord("f", n, "invalid_json", "x"))
    >>> r(BadRecord("f", 12, "bad_time", "y"))
    >>> r.total, r.summary()
    (4, 'invalid_json ×3 (lines 3, 7, …), bad_time ×1 (line 12)')
    """

    def __init__(self, keep: int = 5) -> None:
        self.keep = keep
        self.counts: Counter[str] = Counter()
        self.lines: dict[str, list[int]] = {}
        self.first: dict[str, BadRecord] = {}

    def __call__(self, bad: BadRecord) -> None:
        self.counts[bad.reason] += 1
        self.first.setdefault(bad.reason, bad)
        lines = self.lines.setdefault(bad.reason, [])
        if len(lines) < self.keep:
            lines.append(bad.line)

    @property
    def total(self) -> int:
        """Number of rejected lines."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line: every reason with its count and first line numbers (most frequent first)."""
        parts = []
        for reason, n in self.counts.most_common():
            lines = self.lines[reason]
            shown = ", ".join(map(str, lines)) + (", …" if n > len(lines) else "")
            parts.append(f"{reason} ×{n} (line{'s' if n > 1 else ''} {shown})")
        return ", ".join(parts)


def _report(on_error: ErrorHandler | None, bad: BadRecord) -> None:
    if on_error is None:
        raise InputError(str(bad))
    on_error(bad)


def _open_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line without newline) for non-blank lines."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the generator's finally
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror or exc}"
        raise InputError(msg) from None
    with fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield n, line


def _read_json_lines(
    path: str | Path, decode: Callable[[bytes], _T], on_error: ErrorHandler | None
) -> Iterator[_T]:
    name = str(path)
    for n, line in _open_lines(path):
        try:
            yield decode(line)
        except EventValidationError as exc:
            _report(on_error, BadRecord(name, n, exc.reason, exc.detail))


def read_jsonl(path: str | Path, on_error: ErrorHandler | None = None) -> Iterator[Event]:
    """Events from a JSONL file, each line validated with :func:`~filters.events.decode_event`.

    Blank lines are ignored. Invalid lines go to ``on_error`` (``None``: raise :class:`InputError`).
    """
    return _read_json_lines(path, decode_event, on_error)


def read_jsonl_valid(path: str | Path, rejects: Rejects | None = None) -> Iterator[Event]:
    """The valid events of a JSONL file; invalid lines are skipped and counted in ``rejects``.

    Use it for files known to be clean (generated data) or when ``rejects`` is reported afterwards.
    """
    return read_jsonl(path, on_error=rejects if rejects is not None else Rejects())


def read_jsonl_items(path: str | Path, on_error: ErrorHandler | None = None) -> Iterator[ItemMeta]:
    """Item metadata from a JSONL file, each line validated with :func:`~filters.events.decode_item`."""
    return _read_json_lines(path, decode_item, on_error)


# -- MIND ------------------------------------------------------------------------------------------
def parse_mind_time(text: str) -> int:
    """MIND's US-format local time, read as UTC, to epoch milliseconds.

    >>> parse_mind_time("11/15/2019 8:55:22 AM")
    1573808122000
    >>> parse_mind_time("11/15/2019 12:00:00 AM") == parse_mind_time("11/15/2019 12:00:00 PM") - 43_200_000
    True
    """
    return int(datetime.strptime(text.strip(), MIND_TIME_FORMAT).replace(tzinfo=UTC).timestamp() * 1000)


def load_news_categories(path: str | Path) -> dict[str, str]:
    """``news_id -> category`` from a MIND ``news.tsv`` (rows without a usable category are skipped)."""
    cats: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                cols = line.split("\t", 3)
                if len(cols) >= 2 and _IDENT.fullmatch(cols[0]) and _IDENT.fullmatch(cols[1]):
                    cats[cols[0]] = cols[1]
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror or exc}"
        raise InputError(msg) from None
    return cats


def mind_news_items(path: str | Path) -> Iterator[ItemMeta]:
    """Item metadata (``item_id``, ``category``) for every row of a MIND ``news.tsv``."""
    for item_id, category in load_news_categories(path).items():
        yield ItemMeta(item_id=item_id, category=category)


def _mind_row(line: str, cats: dict[str, str]) -> list[Event]:
    """Events of one behaviors.tsv row; raises ``ValueError("reason: detail")`` for a bad row."""
    cols = line.split("\t")
    if len(cols) != 5:
        msg = f"bad_columns: expected 5 tab-separated columns, got {len(cols)}"
        raise ValueError(msg)
    imp_id, user_id, when, _history, impressions = cols
    for what, value in (("impression_id", imp_id), ("user_id", user_id)):
        if not _IDENT.fullmatch(value):
            msg = f"bad_id: {what} {value!r} is empty, too long or has control characters"
            raise ValueError(msg)
    try:
        ts = parse_mind_time(when)
    except ValueError:
        msg = f"bad_time: {when!r} is not like '11/15/2019 8:55:22 AM'"
        raise ValueError(msg) from None
    tokens = impressions.split()
    if not tokens:
        msg = "bad_impressions: empty impression list"
        raise ValueError(msg)
    shown: list[Event] = []
    clicks: list[Event] = []
    seen: set[str] = set()
    for pos, token in enumerate(tokens):
        item, sep, label = token.rpartition("-")
        if not sep:  # MIND test split: no labels
            item, label = token, ""
        if not _IDENT.fullmatch(item) or label not in ("0", "1", ""):
            msg = f"bad_impressions: token {pos + 1} {token!r} is not like 'N123-0' / 'N123-1'"
            raise ValueError(msg)
        # A repeated item in one list gets its position in the id, so ids stay unique and stable.
        tag = item if item not in seen else f"{item}#{pos}"
        seen.add(item)
        cat = cats.get(item)
        shown.append(Event(event_id=f"{imp_id}:{tag}:impression", type="impression", user_id=user_id,
                           item_id=item, ts=ts, request_id=imp_id, position=pos, category=cat))
        if label == "1":
            clicks.append(Event(event_id=f"{imp_id}:{tag}:click", type="click", user_id=user_id,
                                item_id=item, ts=ts, request_id=imp_id, position=pos, category=cat))
    return shown + clicks


def read_mind(
    path: str | Path,
    news_path: str | Path | None = None,
    on_error: ErrorHandler | None = None,
) -> Iterator[Event]:
    """Events from a MIND ``behaviors.tsv``: per row, one impression per listed item, then one click
    per item labelled ``-1``, all at the row's time (US format, read as UTC).

    ``event_id`` is ``"{impression_id}:{item}:{type}"``, ``request_id`` the impression id and
    ``position`` the index in the list. Categories come from ``news_path``, or from ``news.tsv`` beside
    the behaviors file when that exists. A bad row (wrong column count, bad time, bad token) is
    reported as a whole and skipped; ``on_error=None`` raises :class:`InputError` instead.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "behaviors.tsv").write_text("7\\tU1\\t11/15/2019 8:55:22 AM\\tN1 N2\\tN5-0 N6-1\\n")
    >>> _ = (d / "news.tsv").write_text("N6\\tsports\\tgolf\\tTitle\\n")
    >>> [(e.event_id, e.type, e.position, e.category) for e in read_mind(d / "behaviors.tsv")]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('7:N5:impression', 'impression', 0, None), ('7:N6:impression', 'impression', 1, 'sports'),
     ('7:N6:click', 'click', 1, 'sports')]
    """
    path = Path(path)
    if news_path is None and (path.parent / "news.tsv").is_file():
        news_path = path.parent / "news.tsv"
    cats = load_news_categories(news_path) if news_path is not None else {}
    name = str(path)
    try:
        fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror or exc}"
        raise InputError(msg) from None
    with fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                events = _mind_row(line, cats)
            except ValueError as exc:
                reason, _, detail = str(exc).partition(": ")
                _report(on_error, BadRecord(name, n, reason, detail))
                continue
            yield from events


# -- time shifting ---------------------------------------------------------------------------------
def scan(events: Iterable[Event]) -> tuple[int, int | None]:
    """One pass: (number of events, newest ``ts`` or ``None`` when empty).

    >>> scan([Event(event_id="a", type="click", user_id="u", item_id="i", ts=t) for t in (5, 9, 7)])
    (3, 9)
    """
    count, newest = 0, None
    for ev in events:
        count += 1
        if newest is None or ev.ts > newest:
            newest = ev.ts
    return count, newest


def shift_to_now(
    events: Iterable[Event] | Callable[[], Iterable[Event]],
    now_ms: int,
    *,
    max_ts: int | None = None,
) -> Iterator[Event]:
    """Shift every ``ts`` by one constant so the newest event lands exactly at ``now_ms``.

    Finding the newest event takes a pass of its own. Give either ``max_ts`` (one pass), a callable
    that re-opens the source (two passes, constant memory — use this for files), or a re-iterable
    collection. A one-shot iterator is materialized in memory.

    >>> evs = [Event(event_id=str(t), type="click", user_id="u", item_id="i", ts=t) for t in (100, 300, 200)]
    >>> [e.ts for e in shift_to_now(evs, 1000)]
    [800, 1000, 900]
    >>> [e.ts for e in shift_to_now(lambda: iter(evs), 1000, max_ts=400)]
    [700, 900, 800]
    """
    if callable(events):
        opener: Callable[[], Iterable[Event]] = events
    elif iter(events) is events:  # one-shot iterator
        held = list(events)
        opener = lambda: held  # noqa: E731
    else:
        collection = events
        opener = lambda: collection  # noqa: E731
    if max_ts is None:
        max_ts = scan(opener())[1]
    if max_ts is None:
        return
    delta = now_ms - max_ts
    for ev in opener():
        ts = ev.ts + delta
        if ts < 0:
            msg = f"event {ev.event_id}: ts {ev.ts} shifted by {delta} ms would be negative"
            raise InputError(msg)
        yield msgspec.structs.replace(ev, ts=ts)
