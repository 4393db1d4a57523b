"""Architecture checks: package layering, the import contracts, and what the CLI's probes import."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> packages it must never import (bgp sits above confgen and routes; those two are independent)
FORBIDDEN = {
    "calico_bgp": {"bgp", "confgen", "routes", "labs"},  # the base layer under all three
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


def test_import_contracts_hold():
    """The contracts in .importlinter (layers, no cycles inside a package, pure modules without I/O), so that
    `make test` and `make test-fast` enforce them as `make lint` does."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), f"{lint_imports} is missing: pip install -e '.[test]'"
    proc = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Runs `calico-bgp ARGS` and prints, at exit, every module the process holds. sys.modules rather than
# python -X importtime: importtime does not list a module loaded by importlib.import_module, which is how
# the lazy subcommands are loaded.
_MODULES_AT_EXIT = """
import atexit, sys
atexit.register(lambda: print("MODULES", *sorted(sys.modules), file=sys.stderr))
from bgp.cli import main
sys.argv = ["calico-bgp", *sys.argv[1:]]
main()
"""


def _imported_by(*args: str) -> set[str]:
    """Every module a fresh interpreter has imported after running ``calico-bgp ARGS``."""
    proc = subprocess.run(
        [sys.executable, "-c", _MODULES_AT_EXIT, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("MODULES ")]
    return set(line.split()[1:])


@pytest.mark.parametrize("args", [("status", "--help"), ("health", "--help"), ("routes", "--help")])
def test_probe_commands_load_no_lab_tooling_and_no_grpc(args):
    """Probes run every few seconds: they must not pay for the lab tooling or the etcd client's grpc."""
    loaded = _imported_by(*args)
    heavy = sorted(m for m in loaded if m.split(".")[0] in {"labs", "grpc", "aetcd", "jinja2", "pyroute2"})
    assert not heavy, heavy


def test_lab_subcommand_still_loads_its_group():
    """The other side of laziness: `calico-bgp lab --help` does reach labs.cli."""
    assert "labs.cli" in _imported_by("lab", "--help")


def test_the_daemon_does_not_load_pyroute2_or_psutil():
    """A node's daemon works in its own namespace and dumps links with routes' own codec (routes.nlsocket):
    pyroute2, whose package __init__ loads all of it (about 11 MB of RSS), is only for sockets in a named
    namespace (tests, benchmarks). psutil (10-20 ms of CPU at every start) only when a relay's API
    connection is checked, which ExaBGP's direct connection never is."""
    code = (
        "import sys, bgp.daemon; "
        "print(*sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'psutil')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == []
