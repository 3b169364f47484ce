"""docs/metrics.md lists exactly the collectors of infra/metrics.py, with their type and labels, and every
name follows the conventions (prefix, ``_total`` on counters, a base unit where there is one)."""

from __future__ import annotations

import re
from pathlib import Path

from infra.metrics import catalogue

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_the_doc_lists_every_metric_with_its_type_and_labels() -> None:
    rows = re.findall(r"^\| `(recstream_[a-z0-9_]+)` \| (\w+) \| ([^|]*) \|", DOC.read_text(), re.M)
    documented = {(name, kind, labels.strip()) for name, kind, labels in rows}
    assert documented == {(n, k, ", ".join(labels) or "–") for n, k, labels, _ in catalogue()}


def test_names_follow_the_conventions() -> None:
    for name, kind, _labels, _help in catalogue():
        assert name.startswith("recstream_"), name
        assert name.endswith("_total") == (kind == "counter"), name
        if "seconds" in name or "bytes" in name:
            assert re.search(r"_(seconds|bytes)(_total)?$|_bytes_per_user$", name), name
