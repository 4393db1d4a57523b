"""The node image, run: containerlab/mesh.clab.yml deployed from it with podman, pods pinging across nodes.

Stage: end-to-end check of ``containerlab/Dockerfile`` (built by ``make image``) together with the generated
topology and its scripts. ``clab_deploy`` stands in for ``containerlab deploy``; every pod pings every pod on
the other nodes, which only works once the three daemons exchanged their blocks over BGP and installed them.

Skips, with the reason, where podman or the image is absent (``make image-test`` builds, then runs this);
``make test`` never builds the image.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from clab_deploy import PODMAN, Deployment, load

from labs import catalog, topology
from labs import containerlab as labs_clab

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY_FILE = ROOT / "containerlab" / "mesh.clab.yml"
PING_DEADLINE_S = 120.0  # etcd, seeding, three daemons, sessions, routes: about 5 s here; generous for CI

pytestmark = pytest.mark.container


def _image_present(image: str) -> bool:
    result = subprocess.run([*PODMAN, "image", "exists", image], capture_output=True, timeout=60)
    return result.returncode == 0


@pytest.fixture(scope="module")
def image() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root: containers get network namespaces and veths")
    if not shutil.which("podman"):
        pytest.skip("podman is not installed: run `make image` first")
    if not _image_present(labs_clab.NODE_IMAGE):
        pytest.skip(f"image {labs_clab.NODE_IMAGE} is not built: run `make image` first")
    return labs_clab.NODE_IMAGE


def _cross_node_pairs(lab: topology.Topology) -> list[tuple[topology.LabPod, topology.LabPod]]:
    return [(a, b) for a in lab.pods for b in lab.pods if a.node != b.node]


def _failing_pings(deployment: Deployment, pairs) -> list[tuple[topology.LabPod, topology.LabPod]]:
    """The pairs whose ping fails now; one exec per source pod keeps this to a few podman calls."""
    failing = []
    by_source: dict[topology.LabPod, list[topology.LabPod]] = {}
    for src, dst in pairs:
        by_source.setdefault(src, []).append(dst)
    for src, dsts in by_source.items():
        script = "; ".join(f"ping -c1 -W1 {d.ipv4} >/dev/null 2>&1 || echo {d.ipv4}" for d in dsts)
        result = deployment.exec(src.node, "ip", "netns", "exec", src.name, "sh", "-c", script)
        missed = set(result.stdout.split()) if result.returncode == 0 else {d.ipv4 for d in dsts}
        failing += [(src, d) for d in dsts if d.ipv4 in missed]
    return failing


def _diagnostics(deployment: Deployment, lab: topology.Topology) -> str:
    parts = []
    for node in deployment.topology.nodes:
        parts.append(f"--- {node.name} logs\n{deployment.logs(node.name)}")
    for node in lab.nodes:
        for argv in (("calico-bgp", "status"), ("ip", "route")):
            result = deployment.exec(node.name, *argv)
            parts.append(f"--- {node.name}: {' '.join(argv)}\n{result.stdout}{result.stderr}")
    return "\n".join(parts)


def test_mesh_topology_from_the_image_routes_pods_across_containers(image):
    lab = catalog.TOPOLOGIES["mesh"]()
    clab = load(TOPOLOGY_FILE)
    assert {n.image for n in clab.nodes} == {image}
    pairs = _cross_node_pairs(lab)
    assert len(pairs) == 24  # 3 nodes x 2 pods, each to the 4 pods on the other nodes

    deployment = Deployment(clab, f"clabt{secrets.token_hex(3)}")
    started = time.monotonic()
    try:
        deployment.deploy()
        deployed = time.monotonic()
        failing = _failing_pings(deployment, pairs)
        while failing and time.monotonic() - started < PING_DEADLINE_S:
            time.sleep(1)
            failing = _failing_pings(deployment, failing)
        if failing:
            missing = ", ".join(f"{s.name}->{d.ipv4}" for s, d in failing)
            pytest.fail(f"no ping after {PING_DEADLINE_S:.0f} s: {missing}\n{_diagnostics(deployment, lab)}")
        done = time.monotonic()
        print(f"\ncontainers and links up in {deployed - started:.1f} s; "
              f"all {len(pairs)} cross-node pod pings answered {done - started:.1f} s after deploy began")
        # the routes came from BGP: each node holds the other nodes' blocks with protocol bird
        for node in lab.nodes:
            routes = deployment.exec(node.name, "ip", "route", "show", "proto", "bird").stdout
            others = {n.block for n in lab.nodes if n.name != node.name}
            assert {line.split()[0] for line in routes.splitlines()} >= others, (node.name, routes)
    finally:
        leftovers = deployment.destroy()
    assert not leftovers, leftovers
    names = subprocess.run([*PODMAN, "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True)
    assert not [n for n in names.stdout.split() if n.startswith(deployment.prefix)]
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert deployment.prefix not in namespaces
