"""The alert rules of infra/monitoring/ are valid and behave as their promtool unit tests say: each alert
fires on the inputs it is for, and an idle pipeline raises none (promtool is installed by bootstrap)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

MONITORING = Path(__file__).resolve().parents[2] / "infra" / "monitoring"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool missing: `make test` installs the Debian package prometheus (infra/bootstrap.sh)"
    return subprocess.run([tool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60, check=False)


def test_rules_and_scrape_config_are_valid() -> None:
    out = _promtool("check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_alerts_fire_as_their_unit_tests_expect() -> None:
    out = _promtool("test", "rules", "alerts_test.yml")
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
