"""The distribution as `pip install .` builds it: it carries the configuration files and finds them
from where it is installed, and it declares exactly the third-party packages the code imports.
(CI also installs the wheel into a fresh virtualenv and runs `horse demo` and `horse doctor`.)"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME_PACKAGES = ("model", "catalog", "media", "horse_actors", "flows", "configs")

# Declared, yet never imported by name: each is loaded by another library.
LOADED_INDIRECTLY = {
    "accelerate": "diffusers/transformers load checkpoints through it (low_cpu_mem_usage)",
    "s3fs": "fsspec's s3:// backend, chosen by URL protocol",
    "pytest-timeout": "a pytest plugin (pyproject's timeout setting)",
    "pytest-xdist": "a pytest plugin (the README test command runs the suite with -n 2)",
    "otio-cmx3600-adapter": "an OpenTimelineIO plugin: otio.adapters writes .edl through it",
}
# Imported by name, provided by a declared package.
PROVIDED_BY = {"botocore": "s3fs"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources, so the build leaves nothing in the checkout."""
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in RUNTIME_PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("horse-*.whl")
    return wheel


def test_the_wheel_carries_the_configs_and_finds_them_where_it_is_installed(tmp_path):
    wheel = build_wheel(tmp_path)
    shipped = set(zipfile.ZipFile(wheel).namelist())
    in_repo = {p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    assert len(in_repo) >= 5 and in_repo <= shipped, f"configs missing from the wheel: {sorted(in_repo - shipped)}"

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    probe = ("import flows.settings as s, flows.cli.demo as d; st = s.load_settings(); "
             "print(s.__file__, d.BRIEF.is_file(), st.render.chunk_size, st.resolved_model().device)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HORSE_")} | {"PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    module_file, brief_found, chunk_size, device = out.stdout.split()
    assert module_file.startswith(str(target)), "imported from the installed wheel, not the checkout"
    assert (brief_found, chunk_size, device) == ("True", "24", "cpu"), "defaults, presets and demo brief found"


def _imported_top_level_names(folders: list[Path]) -> set[str]:
    names = set()
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
                elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip"
                      and node.args and isinstance(node.args[0], ast.Constant)):
                    names.add(node.args[0].value.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__"}


def test_dependencies_are_exactly_what_the_code_imports():
    runtime = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    testing = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["test"]}
    distributions = packages_distributions()

    def dists(names: set[str]) -> set[str]:
        return {_name(PROVIDED_BY.get(n) or distributions.get(n, [n])[0]) for n in names}

    code_imports = _imported_top_level_names([ROOT / p for p in RUNTIME_PACKAGES]) - set(RUNTIME_PACKAGES)
    undeclared = dists(code_imports) - runtime
    assert not undeclared, f"imported by the code but not in [project.dependencies]: {sorted(undeclared)}"

    test_imports = _imported_top_level_names([ROOT / "tests", ROOT / "benchmarks"])
    used = dists(code_imports) | dists(test_imports) | {_name(n) for n in PROVIDED_BY.values()}
    unused = (runtime | testing) - used - set(LOADED_INDIRECTLY)
    assert not unused, f"declared but never imported: {sorted(unused)}"
