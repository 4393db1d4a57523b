"""End to end: the `rr` lab. Two route reflectors (one cluster id, label route-reflector=true) and four
clients, mesh off, configured as Calico users do it: a BGPPeer from ``!has(route-reflector)`` to
``has(route-reflector)`` and one between the reflectors; Calico's automatic reverse peerings do the rest.

One lab per module; the reflector-failure test puts the reflector back afterwards.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from labs import catalog, netns, ops, state
from labs import lab as labs_lab

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

TOPO = catalog.TOPOLOGIES["rr"]()
REFLECTORS = {n.name: n.address for n in TOPO.nodes if n.rr_cluster_id}
CLIENTS = {n.name: n.address for n in TOPO.nodes if not n.rr_cluster_id}
BLOCKS = {n.name: n.block for n in TOPO.nodes if n.block}
PODS = {p.node: (p.name, p.ipv4) for p in TOPO.pods}
SESSION_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def rr():
    name = f"q{secrets.token_hex(4)}"
    lines: list[str] = []
    try:
        ok = labs_lab.up("rr", name=name, echo=lines.append)
        yield name, ok, "\n".join(lines)
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


def _sessions(lab: str, node: str) -> dict[str, str]:
    lab_state = ops.load(lab)
    out = ops.status(lab_state, lab_state.node(node), "-o", "json").stdout
    return {p["address"]: p["info"] for p in json.loads(out)["peers"]}


def _kernel(lab: str, node: str) -> dict[str, dict]:
    return {r["dst"]: r for r in netns.routes(state.netns_name(lab, node), "proto", "bird")}


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.2)


def test_up_reports_sessions_and_full_reachability(rr):
    _, ok, output = rr
    assert ok, output
    assert "12/12 pod pairs reached" in output


def test_lab_show_labels_tell_reflectors_from_clients(rr):
    name, _, _ = rr
    labelled = {n["name"] for n in labs_lab.show(name)["nodes"] if "route-reflector" in n["labels"]}
    assert labelled == set(REFLECTORS)


@pytest.mark.parametrize("node", sorted(CLIENTS))
def test_clients_peer_with_both_reflectors_only(rr, node):
    name, _, _ = rr
    sessions = _sessions(name, node)
    assert set(sessions) == set(REFLECTORS.values())
    assert all(info.startswith("Established") for info in sessions.values()), sessions


@pytest.mark.parametrize("node", sorted(REFLECTORS))
def test_reflectors_peer_with_every_client_and_each_other(rr, node):
    name, _, _ = rr
    sessions = _sessions(name, node)
    others = {a for n, a in REFLECTORS.items() if n != node}
    assert set(sessions) == set(CLIENTS.values()) | others
    assert all(info.startswith("Established") for info in sessions.values()), sessions


@pytest.mark.parametrize("node", sorted(CLIENTS))
def test_clients_route_every_other_block_via_its_originating_node(rr, node):
    name, _, _ = rr
    kernel = _kernel(name, node)
    for other, block in BLOCKS.items():
        if other != node:
            assert kernel.get(block, {}).get("gateway") == CLIENTS[other], (block, kernel)


def test_pods_keep_pinging_when_a_reflector_stops_and_the_other_still_reflects(rr):
    """rr1's daemon stops: every client pod keeps reaching every other, and a route that appears while
    rr1 is down (a borrowed /32 on node4) still reaches the other clients, so rr2 alone reflects."""
    name, _, _ = rr
    reflector = sorted(REFLECTORS)[0]
    labs_lab.stop_node(name, reflector)
    borrowed = "192.168.100.5"  # in the pool, outside every block: node4 announces it as a /32
    try:
        _wait(
            lambda: all(
                not _sessions(name, c).get(REFLECTORS[reflector], "").startswith("Established")
                for c in CLIENTS
            ),
            SESSION_TIMEOUT,
            f"clients noticed {reflector} is gone",
        )
        lab_state = ops.load(name)
        pairs = [(src, dst) for src in CLIENTS for dst in CLIENTS if src != dst]
        for _ in range(5):
            lost = [
                (s, d) for s, d in pairs if not labs_lab.ping(name, PODS[s][0], PODS[d][1], state=lab_state)
            ]
            assert not lost, f"pods lost reachability with {reflector} down: {lost}"
            time.sleep(0.5)
        labs_lab.add_pod(name, "node4", "node4-late", borrowed)
        _wait(
            lambda: all(
                _kernel(name, c).get(borrowed, {}).get("gateway") == CLIENTS["node4"]
                for c in CLIENTS
                if c != "node4"
            ),
            SESSION_TIMEOUT,
            f"{borrowed} reflected by the remaining reflector to every client",
        )
        assert labs_lab.ping(name, PODS["node1"][0], borrowed)
    finally:
        labs_lab.start_node(name, reflector)
        if any(p.name == "node4-late" for p in ops.load(name).pods):
            labs_lab.delete_pod(name, "node4-late")
    _wait(
        lambda: all(
            _sessions(name, c).get(REFLECTORS[reflector], "").startswith("Established") for c in CLIENTS
        ),
        SESSION_TIMEOUT,
        f"clients re-established with {reflector}",
    )
