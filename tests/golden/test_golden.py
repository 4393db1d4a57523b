"""Golden files: Calico resources (cases/<case>/input.yaml) -> the ExaBGP config confgen renders.

Each case goes through the same path as the daemon: the resources are stored under Calico's etcd keys
in the in-memory datastore, decoded into a snapshot, turned into an intent and rendered. Regenerate
with ``UPDATE_GOLDEN=1``; every expected file must also pass ``exabgp validate``.

input.yaml: ``node`` (whose view), optional ``router_id``, ``resources`` (v3 resources as calicoctl
takes them) and ``affinities`` ({node: {cidr: state}}).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from confgen.apply import find_executable
from confgen.calc import intent_for
from confgen.datastore.memory import MemoryDatastore
from confgen.render import render

CASES_DIR = Path(__file__).parent / "cases"
CASES = sorted(p for p in CASES_DIR.iterdir() if p.is_dir())
API_RUN = "/usr/bin/env calico-bgp api"


def render_case(case: Path) -> str:
    spec = yaml.safe_load((case / "input.yaml").read_text())
    store = MemoryDatastore(spec["node"])
    for resource in spec.get("resources") or []:
        store.put_resource(resource)
    for node, blocks in (spec.get("affinities") or {}).items():
        for cidr, state in blocks.items():
            store.put_affinity(node, cidr, state)
    intent = intent_for(store.snapshot(), spec["node"], router_id=spec.get("router_id"))
    assert intent.warnings == (), intent.warnings  # a golden input is meant to be valid
    return render(intent, api_run=API_RUN)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden(case):
    expected = case / "expected" / "exabgp.conf"
    rendered = render_case(case)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected.parent.mkdir(exist_ok=True)
        expected.write_text(rendered)
    assert expected.exists(), f"no golden file for {case.name}: run with UPDATE_GOLDEN=1"
    assert rendered == expected.read_text()


@pytest.mark.exabgp
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_passes_exabgp_validate(case):
    expected = case / "expected" / "exabgp.conf"
    result = subprocess.run(
        [find_executable("exabgp"), "validate", str(expected)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
