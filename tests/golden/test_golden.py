"""Golden files: Calico resources (cases/<case>/input.yaml) -> the ExaBGP config and the intent confgen
produces for one node.

Each case goes through the same path as the daemon: the resources are stored under Calico's etcd keys
in the in-memory datastore, decoded into a snapshot, turned into an intent (with secrets read from a
secrets directory laid out like Kubernetes secret volumes) and rendered. ``expected/exabgp.conf`` is the
session config; ``expected/intent.json`` is the policy side the speaker and RIB consume (communities,
service ranges, reflection, next-hop modes, filters; passwords redacted). Regenerate with
``UPDATE_GOLDEN=1``; every expected config must also pass ``exabgp validate``.

input.yaml: ``node`` (whose view), optional ``router_id``, ``resources`` (v3 resources as calicoctl
takes them), ``affinities`` ({node: {cidr: state}}) and ``secrets`` ({secret: {key: value}}).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from bgp.daemon import api_run_line
from confgen.apply import find_executable
from confgen.calc import intent_for
from confgen.datastore.memory import MemoryDatastore
from confgen.intent import intent_document
from confgen.model import parse_snapshot
from confgen.render import render
from confgen.secrets import SecretStore

CASES_DIR = Path(__file__).parent / "cases"
CASES = sorted(p for p in CASES_DIR.iterdir() if p.is_dir())
# The API process line the daemon renders (bgp.daemon.api_run_line), with the node image's paths: Debian's
# socat relays to the daemon's socket (`exabgp validate` needs it installed here too: `make deps`). Without
# socat the line is the Python bridge's, which confgen's own tests render.
API_RUN = api_run_line(
    Path("/var/run/calico-bgp/api.sock"),
    socat="/usr/bin/socat",
    python="/usr/bin/python3",
    script="/opt/calico-bgp/lib/python3.11/site-packages/bgp/exabgp/bridge.py",
)


def render_case(case: Path, secrets_dir: Path) -> tuple[str, str]:
    spec = yaml.safe_load((case / "input.yaml").read_text())
    store = MemoryDatastore(spec["node"])
    for resource in spec.get("resources") or []:
        store.put_resource(resource)
    for node, blocks in (spec.get("affinities") or {}).items():
        for cidr, state in blocks.items():
            store.put_affinity(node, cidr, state)
    for secret, values in (spec.get("secrets") or {}).items():
        (secrets_dir / secret).mkdir(parents=True)
        for key, value in values.items():
            (secrets_dir / secret / key).write_text(value)
    snapshot = store.snapshot()
    model, _ = parse_snapshot(snapshot)
    secrets, _ = SecretStore(secrets_dir).read_all(model.secret_refs())
    intent = intent_for(snapshot, spec["node"], router_id=spec.get("router_id"), secrets=secrets)
    assert intent.warnings == (), intent.warnings  # a golden input is meant to be valid
    document = json.dumps(intent_document(intent), indent=2, sort_keys=True) + "\n"
    return render(intent, api_run=API_RUN), document


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden(case, tmp_path):
    config, document = render_case(case, tmp_path / "secrets")
    expected = case / "expected"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected.mkdir(exist_ok=True)
        (expected / "exabgp.conf").write_text(config)
        (expected / "intent.json").write_text(document)
    for name in ("exabgp.conf", "intent.json"):
        assert (expected / name).exists(), f"no golden {name} for {case.name}: run with UPDATE_GOLDEN=1"
    assert config == (expected / "exabgp.conf").read_text()
    assert document == (expected / "intent.json").read_text()


@pytest.mark.exabgp
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_passes_exabgp_validate(case):
    expected = case / "expected" / "exabgp.conf"
    result = subprocess.run(
        [find_executable("exabgp"), "validate", str(expected)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
