"""The layers only point down: the command line (`cli`) on top; `serving`, `ingest` and `eval`
below it; `rag` and `cache` at the bottom. Every import in the tree is read (the module
level and inside functions alike, since a lazy import is still a dependency), and any that
reaches a higher layer, or any cycle between the packages, fails here with where it is."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

from .conftest import ROOT

LAYERS = {"cli": 3, "serving": 2, "ingest": 2, "eval": 2, "rag": 1, "cache": 1}


def _imports(path: Path) -> list[tuple[str, int]]:
    """(top-level package imported, line) for every absolute import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def _package_edges() -> dict[tuple[str, str], str]:
    """(importer, imported) package pairs, each with the first place it happens."""
    edges: dict[tuple[str, str], str] = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            for target, line in _imports(path):
                if target in LAYERS and target != package:
                    edges.setdefault((package, target), f"{path.relative_to(ROOT)}:{line}")
    return edges


def test_no_package_imports_a_layer_above_it() -> None:
    upward = [
        f"{where}: {importer} (layer {LAYERS[importer]}) imports {target} (layer {LAYERS[target]})"
        for (importer, target), where in _package_edges().items()
        if LAYERS[target] > LAYERS[importer]
    ]
    assert upward == [], "\n".join(upward)


def test_the_packages_import_each_other_without_a_cycle() -> None:
    edges = _package_edges()
    graph: dict[str, set[str]] = {p: set() for p in LAYERS}
    for importer, target in edges:
        graph[importer].add(target)
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycle = path[path.index(nxt) :] + [nxt]
                cycles.append(" -> ".join(f"{a} ({edges[(a, b)]})" for a, b in itertools.pairwise(cycle)))
            elif len(path) < len(LAYERS):
                visit(nxt, [*path, nxt])

    for start in LAYERS:
        visit(start, [start])
    assert cycles == [], "\n".join(sorted(set(cycles)))


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The reader finds imports at any depth, `import x.y` and `from x.y import z` alike."""
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom serving.app import create_app\n\ndef f():\n    import cli.app\n")
    assert _imports(module) == [("os", 1), ("serving", 2), ("cli", 5)]
