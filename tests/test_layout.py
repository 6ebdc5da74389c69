"""The package layout DESIGN.md fixes: each package imports only the layers below it,
stand-ins stay out of production code, modules stay small."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What `pip install .` (and so the Docker image) carries: these must never need simulator/.
INSTALLED_PACKAGES = [
    pattern.rstrip("*")
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
]
INSTALLED_MODULES = [f"{name}.py" for name in PYPROJECT["tool"]["setuptools"]["py-modules"]]
MAX_WORKERS_MODULE_LINES = 300


def _installed_files() -> list[Path]:
    files = [ROOT / name for name in INSTALLED_MODULES]
    for package in INSTALLED_PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_simulator_is_not_an_installed_package() -> None:
    assert {"api", "billing", "models", "tasks", "workers"} <= set(INSTALLED_PACKAGES)
    assert not any("simulator".startswith(package) for package in INSTALLED_PACKAGES)
    assert "simulator" in (ROOT / ".dockerignore").read_text().split()


@pytest.mark.parametrize("path", _installed_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_production_code_does_not_import_the_simulator(path: Path) -> None:
    imported = _imported_modules(path)
    assert not {name for name in imported if name.split(".")[0] == "simulator"}


def test_workers_modules_stay_small() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in (ROOT / "workers").rglob("*.py")
    }
    assert sizes
    assert {path: n for path, n in sizes.items() if n > MAX_WORKERS_MODULE_LINES} == {}


# package -> top-level modules it must never import
FORBIDDEN = {
    "billing": {"flask", "celery", "kombu", "api", "tasks", "workers", "ops"},
    "models": {"flask", "celery", "kombu", "api", "billing", "tasks", "workers"},
    "workers": {"flask", "api", "tasks"},
    "tasks": {"flask", "api"},
    "api": {"tasks"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_downwards(package: str) -> None:
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (ROOT / package).rglob("*.py")
        for name in _imported_modules(path)
        if name.split(".")[0] in FORBIDDEN[package]
    }
    assert sorted(wrong) == []


def test_the_import_reader_sees_every_form(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from tasks.dispatch import enqueue_job\nimport flask.json\nfrom . import x\n"
    )
    assert _imported_modules(module) == {"tasks.dispatch", "flask.json"}
