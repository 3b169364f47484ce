"""Imports go one way (docs/architecture.md): infra → filters → stream | serving | online_learning → recstream.

A small AST walk over every module of the packages (function-local imports included) builds the module
import graph; the test fails on an import that points up or sideways, and on any cycle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Which of our packages each package may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "infra": set(),
    "filters": {"infra"},
    "stream": {"infra", "filters"},
    "serving": {"infra", "filters"},
    "online_learning": {"infra", "filters"},
    "recstream": {"infra", "filters", "stream", "serving", "online_learning"},
}
#: Modules that must never import torch (the trainer's dependency).
NO_TORCH = ("infra", "filters", "stream", "serving")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in ALLOWED:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The modules of ours ``path`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        found.update(t for t in targets if t in known)
    return found - {name}


def graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports."""
    mods = _modules()
    known = set(mods)
    return {name: _imports(path, name, known) for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules (first == last), or [] (iterative DFS).

    >>> find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}})
    ['a', 'b', 'c', 'a']
    >>> find_cycle({"a": {"b"}, "b": set()})
    []
    """
    state: dict[str, int] = {}
    for start in sorted(edges):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(edges[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return []


def test_no_import_points_up_or_sideways() -> None:
    bad = sorted(
        f"{mod} -> {dep}"
        for mod, deps in graph().items()
        for dep in deps
        if (a := mod.split(".")[0]) != (b := dep.split(".")[0]) and b not in ALLOWED[a]
    )
    assert bad == []


def test_no_import_cycle() -> None:
    assert find_cycle(graph()) == []


@pytest.mark.parametrize("pkg", NO_TORCH)
def test_feature_and_serving_code_never_imports_torch(pkg: str) -> None:
    for path in (ROOT / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "torch" for n in names), path


def test_the_walk_sees_a_planted_cycle_and_a_planted_upward_edge() -> None:
    edges = graph()
    assert "filters.bloom" in edges["serving.exposure"] and "infra.keys" in edges["stream.writers"]
    edges["infra.errors"] = {"stream.app"}
    assert find_cycle(edges)  # stream.app reaches infra.errors, which now reaches it back


def test_worker_serving_and_cli_run_without_loading_torch() -> None:
    """At run time too: the worker app, the serving client and the whole CLI (``model`` commands included)
    import without torch; only ``trainer`` and ``full-update`` load it, inside the command."""
    import subprocess
    import sys

    code = ("import sys, stream.app, serving.client, serving.model, recstream.cli, recstream.learning_cli\n"
            "from click.testing import CliRunner\n"
            "CliRunner().invoke(recstream.cli.main, ['model', '--help'])\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False", out.stderr
