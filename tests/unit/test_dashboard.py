"""Every panel of the Grafana dashboard queries metrics that exist (in infra/metrics.py, or Prometheus'
own ``up``), so a renamed metric cannot leave an empty panel behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

from infra.metrics import catalogue

DASHBOARD = Path(__file__).resolve().parents[2] / "infra" / "monitoring" / "grafana-dashboard.json"
_SUFFIXES = ("_bucket", "_sum", "_count")


def _known() -> set[str]:
    names = {"up"}
    for name, kind, _labels, _help in catalogue():
        names.add(name)
        if kind == "histogram":
            names.update(name + s for s in _SUFFIXES)
    return names


def test_every_panel_queries_existing_metrics() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len(panels) >= 10
    known = _known()
    for panel in panels:
        for target in panel["targets"]:
            used = set(re.findall(r"\b(recstream_[a-z0-9_]+|up)\b", target["expr"]))
            assert used and used <= known, (panel["title"], used - known)
