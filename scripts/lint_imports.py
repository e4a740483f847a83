"""Run import-linter (``lint-imports``) over maedet as it is installed, with the contracts in pyproject.toml.

import-linter finds a package's modules by walking the one folder the package is imported from. maedet's wings
come from sibling folders through pyproject's ``[tool.setuptools.package-dir]`` (``zoo/`` is ``maedet.zoo``), so a
walk of ``maedet/`` alone would miss them. This links the installed layout into a temporary folder (``maedet/``
holding the base modules, ``maedet/zoo`` pointing at ``zoo/``, and so on) and runs lint-imports there.

    python scripts/lint_imports.py [lint-imports options, e.g. --verbose]

Exit status: lint-imports' own (0 when every contract is kept).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def package_folders(pyproject: Path) -> dict[str, Path]:
    """Each installed package name and the folder it comes from, as setuptools maps them."""
    mapping = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["setuptools"]["package-dir"]
    return {package: pyproject.parent / folder for package, folder in mapping.items()}


def link_installed_layout(folders: dict[str, Path], dest: Path) -> None:
    """``dest/<package path>`` for every package: the root's files linked one by one, each wing linked whole."""
    for package, folder in sorted(folders.items(), key=lambda item: item[0].count(".")):
        target = dest.joinpath(*package.split("."))
        if "." not in package:
            target.mkdir(parents=True)
            for entry in folder.iterdir():
                if entry.name != "__pycache__" and not (target / entry.name).exists():
                    (target / entry.name).symlink_to(entry)
        elif not target.exists():  # a sub-package inside a linked wing (zoo/latency) is already there
            target.symlink_to(folder, target_is_directory=True)


def lint_imports(repo: Path, args: list[str], capture: bool = False) -> subprocess.CompletedProcess[str]:
    """lint-imports with ``repo``'s pyproject.toml over ``repo``'s packages linked as installed."""
    with tempfile.TemporaryDirectory(prefix="maedet-lint-imports-") as tmp:
        link_installed_layout(package_folders(repo / "pyproject.toml"), Path(tmp))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")])))
        command = [sys.executable, "-c", LINT_IMPORTS, str(repo / "pyproject.toml"), "--no-cache", "--no-logo", *args]
        return subprocess.run(command, cwd=tmp, env=env, check=False, capture_output=capture, text=True)


if __name__ == "__main__":
    sys.exit(lint_imports(REPO, sys.argv[1:]).returncode)
