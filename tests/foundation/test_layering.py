"""Imports point down the layers (DESIGN.md §1) and no module imports itself back in a cycle.

Read from the source (every import statement, including those inside functions, which a runtime
check would miss), then confirmed at runtime in fresh interpreters: importing every module of a
lower package loads none of the engines it must not depend on.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("model", "catalog", "media", "horse_actors", "flows", "configs")

# What each package must never import (our packages and the engines of the layers above it).
FORBIDDEN = {
    "model": {"ray", "prefect", "catalog", "media", "horse_actors", "flows"},
    "catalog": {"torch", "ray", "prefect", "model", "media", "horse_actors", "flows"},
    "media": {"torch", "ray", "prefect", "model", "catalog", "horse_actors", "flows"},
    "horse_actors": {"prefect", "flows"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: Path, module_level_only: bool) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return out


def test_every_package_imports_only_what_its_layer_allows():
    problems = []
    for name, path in _modules().items():
        forbidden = FORBIDDEN.get(name.split(".")[0], set())
        for imported in _imports(name, path, module_level_only=False):
            if imported.split(".")[0] in forbidden:
                problems.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not problems, "\n".join(sorted(problems))


def test_no_import_cycle_between_our_modules():
    modules = _modules()
    graph = {name: {m for m in _imports(name, path, module_level_only=True) if m in modules and m != name}
             for name, path in modules.items()}
    # A package's __init__ importing its own submodules is how packages are built, not a cycle.
    graph = {name: {m for m in deps if not (m.startswith(name + ".") and modules[name].name == "__init__.py")}
             for name, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]) if dep in stack else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("package", ["model", "catalog", "media", "horse_actors"])
def test_importing_a_package_loads_no_engine_of_a_higher_layer(package):
    engines = sorted(FORBIDDEN[package] & {"torch", "ray", "prefect"})
    names = [n for n in _modules() if n.split(".")[0] == package]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            f"print(sorted({set(engines)!r} & {{m.split('.')[0] for m in sys.modules}}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
