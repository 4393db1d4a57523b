"""Architecture checks: package layering and import names."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> packages it must never import (bgp sits above confgen and routes; those two are independent)
FORBIDDEN = {
    "confgen": {"bgp", "routes", "labs"},
    "routes": {"bgp", "confgen", "labs"},
    "bgp": {"labs"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package):
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        if package == "bgp" and path.name == "cli.py":
            continue  # the CLI is the one place that mounts the lab commands
        bad = _imports(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, offenders


def test_packages_resolve_into_this_repo():
    """`routes`, `bgp` and `confgen` are also names on PyPI: make sure we import ours."""
    import bgp
    import confgen
    import routes

    for module in (bgp, confgen, routes):
        assert os.path.abspath(module.__file__).startswith(str(ROOT)), module.__file__
