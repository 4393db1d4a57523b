"""End to end: a 3-node mesh lab with real etcd, real daemons and real kernels.

Needs the whole daemon (`calico-bgp node run`). One lab per module (bringing it up is the expensive part);
tests that change it put it back as they found it.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from labs import lab as labs_lab
from labs import netns, ops, process, state

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

NODES = {"node1": "10.0.0.11", "node2": "10.0.0.12", "node3": "10.0.0.13"}
BLOCKS = {"node1": "192.168.1.0/26", "node2": "192.168.2.0/26", "node3": "192.168.3.0/26"}
CONVERGENCE = 5.0  # seconds a datastore or workload change may take to reach every kernel


@pytest.fixture(scope="module")
def mesh():
    name = f"e{secrets.token_hex(4)}"
    lines: list[str] = []
    try:
        ok = labs_lab.up("mesh", 3, name=name, echo=lines.append)
        yield name, ok, "\n".join(lines)
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


def _ns(lab: str, member: str) -> str:
    return state.netns_name(lab, member)


def _bird_routes(lab: str, node: str) -> dict[str, dict]:
    return {r["dst"]: r for r in netns.routes(_ns(lab, node), "proto", "bird")}


def _wait_until(check, lab, timeout=CONVERGENCE, interval=0.05):
    """Poll check() until it returns a truthy value; returns (value, seconds taken)."""
    started = time.monotonic()
    while True:
        value = check()
        elapsed = time.monotonic() - started
        if value:
            return value, elapsed
        if elapsed > timeout:
            tables = {n: sorted(_bird_routes(lab, n)) for n in NODES}
            raise AssertionError(
                f"not within {timeout} s: {check.__doc__ or check}; proto bird routes: {tables}"
            )
        time.sleep(interval)


@pytest.fixture
def daemons(mesh):
    """The lab, after checking every daemon still runs (a dead one fails here, with its log)."""
    name, _, _ = mesh
    lab = ops.load(name)
    for node in lab.nodes:
        assert process.alive(node.pid), f"daemon {node.name} died; {node.log}:\n{process.tail(node.log)}"
    yield name
    for node in lab.nodes:
        assert process.alive(node.pid), f"daemon {node.name} died; {node.log}:\n{process.tail(node.log)}"


def test_up_reports_sessions_and_full_reachability(mesh):
    name, ok, output = mesh
    assert ok, output
    assert "30/30 pod pairs reached" in output


@pytest.mark.parametrize("node", sorted(NODES))
def test_every_mesh_session_is_established(daemons, node):
    lab = ops.load(daemons)
    status = json.loads(ops.status(lab, lab.node(node), "-o", "json").stdout)
    assert status["node"] == node
    peers = {p["address"]: p for p in status["peers"]}
    assert set(peers) == {ip for other, ip in NODES.items() if other != node}
    for peer in peers.values():
        assert peer["info"].startswith("Established"), peer
        assert peer["type"] == "node-to-node mesh"
        assert peer["family"] == "ipv4"


@pytest.mark.parametrize("node", sorted(NODES))
def test_remote_blocks_are_routed_via_their_node_with_proto_bird(mesh, node):
    name, _, _ = mesh
    routes = _bird_routes(name, node)
    for other, block in BLOCKS.items():
        if other == node:
            continue
        assert block in routes, f"{node} has no route to {block}: {routes}"
        assert (routes[block].get("gateway"), routes[block].get("dev")) == (NODES[other], "eth0")


@pytest.mark.parametrize("node", sorted(NODES))
def test_own_block_is_blackholed_with_proto_bird(mesh, node):
    name, _, _ = mesh
    blackholes = netns.routes(_ns(name, node), "type", "blackhole", "proto", "bird")
    assert [r["dst"] for r in blackholes] == [BLOCKS[node]]


@pytest.mark.parametrize(("src", "dst"), [("node1-pod1", "192.168.3.3"), ("node3-pod2", "192.168.1.2")])
def test_cross_node_ping(mesh, src, dst):
    name, _, _ = mesh
    assert labs_lab.ping(name, src, dst)


def test_borrowed_ip_is_announced_and_withdrawn_within_5s(daemons):
    """A pod on node2 with an address from node1's block: node2 announces the /32, which beats node1's /26."""
    name = daemons
    borrowed = "192.168.1.10"
    labs_lab.add_pod(name, "node2", "node2-borrowed", borrowed)
    try:

        def announced():
            """node1 and node3 route the borrowed /32 via node2 and node1-pod1, node3-pod1 reach it"""
            return all(
                _bird_routes(name, n).get(borrowed, {}).get("gateway") == NODES["node2"]
                for n in ("node1", "node3")
            ) and all(labs_lab.ping(name, pod, borrowed) for pod in ("node1-pod1", "node3-pod1"))

        _, seconds = _wait_until(announced, name)
        print(f"borrowed /32 reachable after {seconds:.2f} s")
    finally:
        labs_lab.delete_pod(name, "node2-borrowed")

    def withdrawn():
        """the borrowed /32 is gone from node1 and node3"""
        return all(borrowed not in _bird_routes(name, n) for n in ("node1", "node3"))

    _wait_until(withdrawn, name)


def test_affinity_removal_withdraws_the_block_within_5s(daemons):
    """Without its affinity node3 no longer owns the /26; its pods stay reachable as borrowed /32s."""
    name = daemons
    block, pods = BLOCKS["node3"], ("192.168.3.2", "192.168.3.3")
    assert labs_lab.delete_affinity(name, "node3", block)
    try:

        def block_gone():
            """node1 and node2 dropped node3's /26 and route node3's pods as /32s via node3"""
            tables = [_bird_routes(name, n) for n in ("node1", "node2")]
            return all(
                block not in t and all(t.get(p, {}).get("gateway") == NODES["node3"] for p in pods)
                for t in tables
            )

        _, seconds = _wait_until(block_gone, name)
        print(f"block withdrawn after {seconds:.2f} s")
        assert labs_lab.ping(name, "node1-pod1", pods[0])
    finally:
        labs_lab.set_affinity(name, "node3", block)

    def block_back():
        """node1 and node2 route node3's /26 again and no longer carry its pods' /32s"""
        tables = [_bird_routes(name, n) for n in ("node1", "node2")]
        return all(block in t and not any(p in t for p in pods) for t in tables)

    _wait_until(block_back, name)
