"""Shared parts of the lab tests that run three nodes with the mesh off and one BGPPeer per node pair
(reverse peering gives each pair its two ends): the resources, applying them, and reading the sessions."""

from __future__ import annotations

import json
import subprocess
import time

from labs import lab as labs_lab
from labs import ops

NODES = {"node1": "10.0.0.11", "node2": "10.0.0.12", "node3": "10.0.0.13"}
PAIRS = [("node1", "node2"), ("node1", "node3"), ("node2", "node3")]
NO_MESH = {
    "apiVersion": "projectcalico.org/v3",
    "kind": "BGPConfiguration",
    "metadata": {"name": "default"},
    "spec": {"nodeToNodeMeshEnabled": False, "asNumber": 64512},
}


def apply(endpoints: str, documents: list[dict]) -> None:
    """``calico-bgp apply`` of these resources to the lab's etcd."""
    text = "\n---\n".join(json.dumps(d) for d in documents)
    cmd = [ops.venv_tool("calico-bgp"), "apply", "-f", "-", "--etcd-endpoints", endpoints]
    result = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def peer(a: str, b: str, keepalive: str = "30s") -> dict:
    """The BGPPeer that gives node ``a`` a session to node ``b``."""
    return {
        "apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": f"{a}-{b}"},
        "spec": {"node": a, "peerIP": NODES[b], "asNumber": 64512, "keepaliveTime": keepalive},
    }  # fmt: skip


def sessions(lab: str) -> dict[tuple[str, str], dict]:
    """(node, peer address) -> the peer's entry in that node's `calico-bgp status -o json`."""
    loaded = ops.load(lab)
    out = {}
    for node in NODES:
        report = json.loads(ops.status(loaded, loaded.node(node), "-o", "json").stdout)
        for entry in report["peers"]:
            out[(node, entry["address"])] = entry
    return out


def wait(check, timeout: float = 30.0):
    """Poll ``check`` every 0.2 s until it returns something true; fail with its docstring at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s: {check.__doc__}"
        time.sleep(0.2)


def up_with_explicit_peers(name: str, keepalive: str = "30s", timeout: float = 60.0) -> str:
    """Bring up lab ``name`` (3 nodes), turn the mesh off, peer every pair explicitly and wait until the six
    sessions are Established. Returns the etcd endpoints. The caller tears the lab down."""
    assert labs_lab.up("mesh", 3, name=name, echo=lambda line: None)
    endpoints = ",".join(labs_lab.show(name)["etcd_endpoints"])
    apply(endpoints, [NO_MESH, *(peer(a, b, keepalive) for a, b in PAIRS)])

    def all_explicit_and_up():
        """six node-specific sessions, Established"""
        found = sessions(name)
        return len(found) == 6 and all(
            p["type"] == "node specific" and p["info"] == "Established" for p in found.values()
        )

    wait(all_explicit_and_up, timeout=timeout)
    return endpoints
