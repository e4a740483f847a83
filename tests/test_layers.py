"""The layers of docs/design.md hold: a light base layer, the import-linter contracts, one home for private names.

Importing the error type used to load torch and timm (``maedet/__init__`` imported the zoo); export imported
detect while detect imported export. The contracts in pyproject.toml (run by ``make test`` through
scripts/lint_imports.py) state the layers; these tests run them, show that they see the wings and catch a lazy
upward import, and check what a static graph cannot: which modules Python really loads.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "lint_imports.py"
# Imported on their own, none of these may load torch or timm (the CLI runner, the runtimes, the launcher...).
LIGHT_MODULES = [
    "maedet",
    "maedet.cli",
    "maedet.devices",
    "maedet.engine_sidecar",
    "maedet.errors",
    "maedet.fileio",
    "maedet.hub",
    "maedet.images",
    "maedet.jsonio",
    "maedet.launch",
    "maedet.runtime",
    "maedet.sizes",
]


def _loaded_after_import(statement: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after ``statement``."""
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_base_modules_load_neither_torch_nor_timm(module: str) -> None:
    loaded = _loaded_after_import(f"import {module}")
    assert "maedet" in loaded
    assert not loaded & {"torch", "timm", "torchvision", "onnx"}, sorted(loaded & {"torch", "timm", "onnx"})


def test_import_maedet_zoo_registers_the_models_and_the_root_reaches_the_zoo_on_first_use() -> None:
    code = (
        "import json, sys, maedet, timm\n"
        "before = timm.is_model('maedet_m')\n"
        "create = maedet.create_detector\n"
        "import maedet.zoo\n"
        "print(json.dumps([before, timm.is_model('maedet_m'), create is maedet.zoo.create_detector]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(done.stdout) == [False, True, True]
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        import maedet

        _ = maedet.not_a_name


def _lint_script():
    if importlib.util.find_spec("importlinter") is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    spec = importlib.util.spec_from_file_location("lint_imports_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_import_contracts_hold() -> None:
    script = _lint_script()
    done = script.lint_imports(REPO, [], capture=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken." in done.stdout


def test_import_contracts_catch_a_lazy_upward_import(tmp_path: Path) -> None:
    """A copy of the tree where export imports detect inside a function, as precision.py did: the contract breaks."""
    script = _lint_script()
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for folder in script.package_folders(REPO / "pyproject.toml").values():
        shutil.copytree(folder, tmp_path / folder.name, ignore=shutil.ignore_patterns("__pycache__", "*.gz", "*.json"))
    precision = tmp_path / "export" / "precision.py"
    precision.write_text(precision.read_text() + "\n\ndef _upward():\n    from maedet.detect.run import map_back\n")
    done = script.lint_imports(tmp_path, [], capture=True)
    assert done.returncode != 0
    assert "maedet.export is not allowed to import maedet.detect" in done.stdout, done.stdout
    assert "maedet.export.precision -> maedet.detect.run" in done.stdout


def _private_imports(path: Path) -> set[str]:
    """Dotted names of torch/timm modules or attributes with a private (single underscore) part used in ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names = [f"{node.value.id}.{node.attr}"]
        for name in names:
            parts = name.split(".")
            if parts[0] in ("torch", "timm") and any(p.startswith("_") and not p.startswith("__") for p in parts):
                found.add(name)
    return found


def test_private_upstream_names_are_imported_in_one_module_each() -> None:
    """timm's private names only in zoo/timm_private.py; each private torch name in a single module."""
    users: dict[str, set[str]] = {}
    for folder in ("maedet", "zoo", "search", "export", "detect", "train", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            for name in _private_imports(path):
                users.setdefault(name, set()).add(str(path.relative_to(REPO)))
    timm_users = set().union(*(files for name, files in users.items() if name.startswith("timm.")))
    assert timm_users == {"zoo/timm_private.py"}
    assert {name: files for name, files in users.items() if len(files) > 1} == {}


def test_installed_timm_is_inside_the_bound_pyproject_states() -> None:
    """The upper bound exists because of zoo/timm_private.py; the suite only vouches for versions it ran with."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    spec = next(Requirement(line.split('"')[1]) for line in text.splitlines() if line.strip().startswith('"timm'))
    assert not spec.specifier.contains("1.1.0"), "timm needs an upper bound while zoo/timm_private.py exists"
    assert importlib.metadata.version("timm") in spec.specifier
