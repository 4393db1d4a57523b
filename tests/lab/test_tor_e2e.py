"""End to end: the `tor` lab (AS per rack). Two racks, an FRR ToR each (AS 65101 / 65102), nodes of rack r
in AS 6500r peering eBGP with their ToR through a BGPPeer with ``nodeSelector: rack == 'rack<r>'``, the ToRs
peering with each other. Assertions about the ToRs read FRR's own JSON (``vtysh -N <pathspace>``).

One lab per module: bringing it up is the expensive part.
"""

from __future__ import annotations

import ipaddress
import secrets

import pytest

from labs import catalog, netns, ops, routers, state
from labs import lab as labs_lab

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

TOPO = catalog.TOPOLOGIES["tor"]()
RACK_NODES = {r.name: [n for n in TOPO.nodes if n.segment == r.ports[0].segment] for r in TOPO.routers}
BLOCKS = {n.name: n.block for n in TOPO.nodes}
POOL = ipaddress.ip_network(TOPO.pools[0].cidr)


@pytest.fixture(scope="module")
def tor():
    reason = routers.frr_available()
    if reason:
        pytest.skip(reason)
    name = f"r{secrets.token_hex(4)}"
    lines: list[str] = []
    try:
        ok = labs_lab.up("tor", name=name, echo=lines.append)
        yield name, ok, "\n".join(lines)
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


def _pathspace(lab: str, router: str) -> str:
    return ops.load(lab).router(router).pathspace


def test_up_reports_sessions_and_full_reachability(tor):
    _, ok, output = tor
    assert ok, output
    assert "12/12 pod pairs reached" in output


def test_lab_show_lists_the_routers_and_the_node_labels(tor):
    name, _, _ = tor
    info = labs_lab.show(name)
    assert info["routers"] == [
        {"name": "tor1", "netns": state.netns_name(name, "tor1"), "kind": "frr", "asn": 65101},
        {"name": "tor2", "netns": state.netns_name(name, "tor2"), "kind": "frr", "asn": 65102},
    ]
    racks = {n["name"]: (n["labels"]["rack"], n["asn"]) for n in info["nodes"]}
    assert racks == {
        "node1": ("rack1", 65001),
        "node2": ("rack1", 65001),
        "node3": ("rack2", 65002),
        "node4": ("rack2", 65002),
    }


@pytest.mark.parametrize("tor_name", sorted(RACK_NODES))
def test_tor_sessions_are_established_with_its_nodes_and_the_other_tor(tor, tor_name):
    name, _, _ = tor
    sessions = routers.bgp_sessions(_pathspace(name, tor_name))
    router = next(r for r in TOPO.routers if r.name == tor_name)
    assert sessions == {n.address: "Established" for n in router.neighbors}
    assert {n.address for n in RACK_NODES[tor_name]} < set(sessions)


@pytest.mark.parametrize("tor_name", sorted(RACK_NODES))
def test_every_block_is_in_every_tor_table_and_no_pod_routes(tor, tor_name):
    name, _, _ = tor
    table = routers.bgp_routes(_pathspace(name, tor_name))
    assert set(BLOCKS.values()) <= set(table), table.keys()
    in_pool = [p for p in table if ipaddress.ip_network(p).subnet_of(POOL)]
    assert sorted(in_pool) == sorted(BLOCKS.values()), f"pod /32s or other pool routes leaked: {in_pool}"


@pytest.mark.parametrize("tor_name", sorted(RACK_NODES))
def test_nodes_send_their_tor_their_block_and_nothing_else(tor, tor_name):
    """Adj-RIB-In as received (soft-reconfiguration inbound): no host subnet, no default route sent back,
    no other rack's blocks passed on."""
    name, _, _ = tor
    for node in RACK_NODES[tor_name]:
        received = routers.received_routes(_pathspace(name, tor_name), node.address)
        assert received == {node.block}, f"{node.name} sent {tor_name} {received}"


@pytest.mark.parametrize("node", [n.name for n in TOPO.nodes])
def test_default_route_from_the_tor_is_in_the_node_kernel(tor, node):
    name, _, _ = tor
    tor_address = next(r.router_id for r, members in _racks() if node in members)
    defaults = netns.routes(state.netns_name(name, node), "default", "proto", "bird")
    assert [r.get("gateway") for r in defaults] == [tor_address], defaults


def _racks():
    return [(r, [n.name for n in RACK_NODES[r.name]]) for r in TOPO.routers]


@pytest.mark.parametrize("node", [n.name for n in TOPO.nodes])
def test_other_racks_blocks_are_routed_via_the_tor(tor, node):
    name, _, _ = tor
    rack_router, members = next((r, m) for r, m in _racks() if node in m)
    learned = {r["dst"]: r for r in netns.routes(state.netns_name(name, node), "proto", "bird")}
    for other, block in BLOCKS.items():
        if other in members:
            continue
        assert learned.get(block, {}).get("gateway") == rack_router.router_id, (block, learned)


@pytest.mark.parametrize(
    ("src", "dst"),
    [("node1-pod1", "192.168.3.2"), ("node4-pod1", "192.168.2.2"), ("node1-pod1", "192.168.2.2")],
    ids=["rack1-to-rack2", "rack2-to-rack1", "within-rack1-via-tor"],
)
def test_pods_ping_across_racks(tor, src, dst):
    name, _, _ = tor
    assert labs_lab.ping(name, src, dst)
