"""The suite is hermetic: the environment and ./recstream.toml of the machine running it change nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

PROBE = '''
from infra.settings import Settings, load_settings

def test_defaults_hold_whatever_the_machine_says():
    s = load_settings()
    assert s.kafka.partitions == 8 and s.bloom.fpr == 0.01 and s.redis.url == ""
    assert Settings() == s
'''


def test_poisoned_environment_and_toml_do_not_reach_the_tests(tmp_path: Path) -> None:
    (tmp_path / "recstream.toml").write_text("[kafka]\npartitions = 3\n[bloom]\nfpr = 0.2\n")
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "conftest.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.conftest import pytest_configure  # noqa: F401  (the suite's own hook)\n"
    )
    env = {**os.environ, "RECSTREAM_KAFKA_PARTITIONS": "5", "RECSTREAM_REDIS_URL": "redis://10.1.1.1:1/0",
           "RECSTREAM_CONFIG": str(tmp_path / "recstream.toml")}
    env.pop("PYTEST_ADDOPTS", None)
    # the same probe without the suite's hook sees the poison: the check can fail
    bare = subprocess.run(
        [sys.executable, "-c", "from infra.settings import Settings; print(Settings().kafka.partitions)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )
    assert bare.stdout.strip() == "5"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-o", "addopts=", str(tmp_path / "test_probe.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_this_process_is_clean() -> None:
    assert not [n for n in os.environ if n.startswith("RECSTREAM_") and n != "RECSTREAM_CONFIG"]
    assert Settings().kafka.partitions == 8
