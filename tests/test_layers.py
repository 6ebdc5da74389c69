"""The dependency rules of DESIGN.md, checked on the source: each package imports only
the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> top-level modules it must never import
FORBIDDEN = {
    "billing": {"flask", "celery", "kombu", "api", "tasks", "workers", "ops", "simulator"},
    "models": {"flask", "celery", "kombu", "api", "billing", "tasks", "workers", "simulator"},
    "workers": {"flask", "api", "tasks", "simulator"},
    "tasks": {"flask", "api", "simulator"},
    "api": {"tasks", "simulator"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_downwards(package: str) -> None:
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (ROOT / package).rglob("*.py")
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN[package]
    }
    assert sorted(wrong) == []


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from tasks.dispatch import enqueue_job\nimport flask.json\n")
    assert imported_modules(module) == {"tasks.dispatch", "flask.json"}
