"""Dual-stack address plans, the IPIP topologies, and the "not provable" mark of the reachability grid."""

from __future__ import annotations

import ipaddress
import json

import pytest

from labs import catalog, ipv6, report, topology
from labs.encap import build_crosssubnet, build_ipip


@pytest.mark.parametrize(
    ("ipv4", "expected"),
    [("10.0.0.11/24", "fd00::11/64"), ("10.0.1.13/24", "fd00:0:0:1::13/64"), ("10.0.0.1/24", "fd00::1/64"),
     ("10.0.254.2/24", "fd00:0:0:fe::2/64")],
)
def test_node_addresses_keep_their_digits(ipv4, expected):
    assert ipv6.node_ipv6(ipv4) == expected


@pytest.mark.parametrize(
    ("v4", "v6"),
    [("192.168.1.2", "fd00:10:0:1::2"), ("192.168.1.63", "fd00:10:0:1::3f"),
     ("192.168.12.10", "fd00:10:0:c::a")],
)
def test_pods_stay_inside_their_nodes_block(v4, v6):
    assert ipv6.pod_ipv6(v4) == v6
    block = f"{v4.rsplit('.', 1)[0]}.0/26"
    assert ipv6.block_ipv6(block) == f"{v6.rsplit(':', 1)[0]}:/122"
    assert ipaddress.ip_address(v6) in ipaddress.ip_network(ipv6.block_ipv6(block))


@pytest.mark.parametrize(
    ("v4", "v6"),
    [("10.0.1.0/24 via 10.0.0.1", "fd00:0:0:1::/64 via fd00::1"),
     ("192.168.3.0/26 via 10.0.1.13", "fd00:10:0:3::/122 via fd00:0:0:1::13")],
)
def test_static_routes_map_too(v4, v6):
    assert ipv6.route_ipv6(v4) == v6


def test_dual_stack_mesh_resources_and_peers():
    mesh = ipv6.with_ipv6(catalog.TOPOLOGIES["mesh"]())
    assert mesh.expected_peers("node1") == ("10.0.0.12", "10.0.0.13", "fd00::12", "fd00::13")
    items = dict(topology.calico_resources(mesh))
    node = json.loads(items["/calico/resources/v3/projectcalico.org/nodes/node1"])
    assert node["spec"]["bgp"] == {"ipv4Address": "10.0.0.11/24", "ipv6Address": "fd00::11/64"}
    assert "/calico/ipam/v2/host/node1/ipv6/block/fd00:10:0:1::-122" in items
    pool = json.loads(items["/calico/resources/v3/projectcalico.org/ippools/default-ipv6-ippool"])
    spec = pool["spec"]
    assert (spec["cidr"], spec["blockSize"], spec["ipipMode"]) == ("fd00:10::/48", 122, "Never")
    assert [p.ipv6 for p in mesh.pods if p.node == "node2"] == ["fd00:10:0:2::2", "fd00:10:0:2::3"]
    assert ipv6.with_ipv6(mesh) == mesh  # idempotent


def test_ipv6_is_refused_with_frr_routers():
    with pytest.raises(ValueError, match="FRR routers"):
        ipv6.with_ipv6(catalog.TOPOLOGIES["tor"]())


def test_ipip_topology():
    topo = build_ipip()
    assert [(p.cidr, p.ipip_mode) for p in topo.pools] == [("192.168.0.0/16", "Always")]
    assert [n.address for n in topo.nodes] == ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
    assert catalog.TOPOLOGIES["ipip"] is build_ipip


def test_crosssubnet_topology_has_two_subnets_a_router_and_routes_through_it():
    topo = build_crosssubnet(4)
    assert [(n.name, n.ipv4, n.segment) for n in topo.nodes] == [
        ("node1", "10.0.0.11/24", ""), ("node2", "10.0.0.12/24", ""),
        ("node3", "10.0.1.13/24", "subnet2"), ("node4", "10.0.1.14/24", "subnet2"),
    ]
    assert topo.nodes[0].routes == ("10.0.1.0/24 via 10.0.0.1",)
    assert topo.nodes[3].routes == ("10.0.0.0/24 via 10.0.1.1",)
    (router,) = topo.routers
    assert (router.kind, [p.ipv4 for p in router.ports]) == ("external", ["10.0.0.1/24", "10.0.1.1/24"])
    assert "192.168.4.0/26 via 10.0.1.14" in router.routes
    assert topo.pools[0].ipip_mode == "CrossSubnet"
    assert topo.expected_peers("node1") == ("10.0.0.12", "10.0.1.13", "10.0.1.14")
    assert catalog.TOPOLOGIES["crosssubnet"] is build_crosssubnet


def test_grid_marks_pairs_it_cannot_prove():
    pods = [("a", "1.1.1.1"), ("b", "2.2.2.2")]
    lines = report.render_matrix(pods, {("a", "2.2.2.2"): None, ("b", "1.1.1.1"): True}).splitlines()
    assert lines[1].split() == ["a", "·", "-"]
    assert lines[2].split() == ["b", "✓", "·"]
