"""The packages' layering (docs/ARCHITECTURE.md): who may import whom, checked on every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("models", "modelrepo", "protos", "export", "service", "loadtest", "bench", "harness", "examples")
# package -> the packages of ours it may import (itself always)
ALLOWED = {
    "protos": set(),
    "modelrepo": {"protos"},
    "models": {"modelrepo"},
    "export": {"models", "modelrepo", "protos"},
    "service": {"modelrepo", "protos"},
    "loadtest": {"protos"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(OURS)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_lies_below_it(package):
    wrong = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_packages(path) - ALLOWED[package] - {package}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}; found {wrong}"


def test_the_wheel_ships_the_product_only():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = {p.rstrip("*") for p in config["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert shipped == set(ALLOWED)
