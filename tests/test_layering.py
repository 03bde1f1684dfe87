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


# service's sub-packages (docs/ARCHITECTURE.md): each may import only those below it, and the plain modules
# beside them (errors, settings, sockets, cpus); service.app composes them all.
SERVICE_BASE = {"errors", "settings", "sockets", "cpus"}
SERVICE_ALLOWED = {
    "backends": set(),
    "batching": set(),
    "telemetry": {"batching"},
    "serving": {"backends", "batching", "telemetry"},
    "dataplane": {"serving", "telemetry"},
    "protocol": {"dataplane", "serving", "telemetry"},
}


def service_imports(path: Path) -> set[str]:
    """The ``service.X`` names a module imports (X a sub-package or a plain module of service)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {n.split(".")[1] for n in names if n.startswith("service.") and n.count(".") >= 1}


@pytest.mark.parametrize("sub", sorted(SERVICE_ALLOWED))
def test_service_sub_packages_import_only_what_lies_below_them(sub):
    allowed = SERVICE_ALLOWED[sub] | SERVICE_BASE | {sub}
    wrong = {}
    for path in sorted((ROOT / "service" / sub).rglob("*.py")):
        bad = service_imports(path) - allowed
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"service.{sub} may import only {sorted(allowed - {sub})}; found {wrong}"


def test_every_service_sub_package_has_its_place():
    subs = {p.name for p in (ROOT / "service").iterdir() if (p / "__init__.py").exists()}
    assert subs == set(SERVICE_ALLOWED), "add the new sub-package to SERVICE_ALLOWED and the architecture"
