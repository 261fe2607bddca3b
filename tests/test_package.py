"""The package's shape: every module is on the map in edgecnn/__init__.py, and no module imports
itself back through others (an import cycle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import edgecnn

PACKAGE = Path(edgecnn.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def import_graph(top_level_only: bool = False) -> dict[str, set[str]]:
    """module -> the edgecnn modules it imports (at any depth of its code, or only at module level)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = tree.body if top_level_only else ast.walk(tree)
        deps = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from edgecnn.cli import train` imports the module edgecnn.cli.train, else the module itself
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_of_the_package_imports_itself_back_through_others():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_no_command_module_imports_the_cli_package_that_registers_it():
    graph = import_graph()
    commands = [m for m in graph if m.startswith("edgecnn.cli.") and not m.endswith("__main__")]
    assert commands and all("edgecnn.cli" not in graph[m] for m in commands)


def test_python_dash_m_edgecnn_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "edgecnn", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("edgecnn "), done.stderr


def test_the_package_map_names_every_module_once_by_its_side():
    doc = edgecnn.__doc__
    for name, path in _modules().items():
        relative = path.relative_to(PACKAGE).as_posix()
        short = relative.removeprefix("serve/").removeprefix("cli/")
        where = doc if "/" not in relative else doc[doc.index(relative.split("/")[0] + "/") :]
        assert short in where, f"{relative} is not on the map in edgecnn/__init__.py"
