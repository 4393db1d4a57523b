"""Lab topologies and the Calico resources they become (pure)."""

from __future__ import annotations

import json

import pytest

from labs import catalog, topology
from labs.topology import LabNode, LabPeer, LabPod, Topology

RES = "/calico/resources/v3/projectcalico.org"


@pytest.mark.parametrize(
    ("count", "last_node", "last_ip", "last_block", "last_pods"),
    [
        (1, "node1", "10.0.0.11/24", "192.168.1.0/26", ("192.168.1.2", "192.168.1.3")),
        (3, "node3", "10.0.0.13/24", "192.168.3.0/26", ("192.168.3.2", "192.168.3.3")),
        (12, "node12", "10.0.0.22/24", "192.168.12.0/26", ("192.168.12.2", "192.168.12.3")),
        (244, "node244", "10.0.0.254/24", "192.168.244.0/26", ("192.168.244.2", "192.168.244.3")),
    ],
    ids=["one", "default", "twelve", "largest"],
)
def test_mesh_layout(count, last_node, last_ip, last_block, last_pods):
    topo = topology.build_mesh(count)
    assert len(topo.nodes) == count
    last = topo.nodes[-1]
    assert (last.name, last.ipv4, last.block) == (last_node, last_ip, last_block)
    assert tuple(p.ipv4 for p in topo.pods if p.node == last_node) == last_pods
    assert len(topo.pods) == 2 * count
    assert topo.global_asn == 64512 and topo.mesh_enabled
    assert [(p.cidr, p.ipip_mode, p.vxlan_mode, p.block_size) for p in topo.pools] == [
        ("192.168.0.0/16", "Never", "Never", 26)
    ]


def test_mesh_default_is_three_nodes_registered_as_mesh():
    assert catalog.TOPOLOGIES["mesh"]() == topology.build_mesh(3)
    assert [n.name for n in topology.build_mesh().nodes] == ["node1", "node2", "node3"]


@pytest.mark.parametrize("count", [0, -1, 245])
def test_mesh_rejects_impossible_sizes(count):
    with pytest.raises(ValueError, match="1..244"):
        topology.build_mesh(count)


def test_mesh_resources_are_what_calico_node_would_write():
    items = topology.calico_resources(topology.build_mesh(2))
    assert [k for k, _ in items] == [
        f"{RES}/bgpconfigurations/default",
        f"{RES}/nodes/node1",
        f"{RES}/nodes/node2",
        f"{RES}/ippools/default-ipv4-ippool",
        "/calico/ipam/v2/host/node1/ipv4/block/192.168.1.0-26",
        "/calico/ipam/v2/host/node2/ipv4/block/192.168.2.0-26",
    ]
    values = dict(items)
    assert json.loads(values[f"{RES}/bgpconfigurations/default"]) == {
        "kind": "BGPConfiguration",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "default"},
        "spec": {"logSeverityScreen": "Info", "nodeToNodeMeshEnabled": True, "asNumber": 64512},
    }
    assert json.loads(values[f"{RES}/nodes/node2"]) == {
        "kind": "Node",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "node2", "labels": {"kubernetes.io/hostname": "node2"}},
        "spec": {"bgp": {"ipv4Address": "10.0.0.12/24"}},
    }
    assert json.loads(values[f"{RES}/ippools/default-ipv4-ippool"])["spec"] == {
        "cidr": "192.168.0.0/16",
        "ipipMode": "Never",
        "vxlanMode": "Never",
        "blockSize": 26,
        "natOutgoing": False,
        "nodeSelector": "all()",
        "disableBGPExport": False,
    }
    assert json.loads(values["/calico/ipam/v2/host/node1/ipv4/block/192.168.1.0-26"]) == {
        "state": "confirmed",
        "deleted": False,
    }


@pytest.mark.parametrize(
    ("node", "bgp", "effective"),
    [
        (LabNode("a", "10.0.0.1/24"), {"ipv4Address": "10.0.0.1/24"}, 64512),
        (LabNode("b", "10.0.0.2/24", asn=65001), {"ipv4Address": "10.0.0.2/24", "asNumber": 65001}, 65001),
    ],
    ids=["inherits-global-as", "own-as"],
)
def test_node_as_number(node, bgp, effective):
    topo = Topology("t", (node,), bgp_config={"asNumber": 64512})
    _, value = topology.node_resource(node)
    assert json.loads(value)["spec"] == {"bgp": bgp}
    assert topo.node_asn(node.name) == effective


def test_peers_and_affinity_helpers():
    peer = LabPeer("tor", {"peerIP": "10.0.0.1", "asNumber": 65000})
    key, value = topology.bgppeer_resource(peer)
    assert key == f"{RES}/bgppeers/tor"
    assert json.loads(value)["spec"] == {"peerIP": "10.0.0.1", "asNumber": 65000}
    assert topology.affinity("node7", "192.168.7.64/26") == (
        "/calico/ipam/v2/host/node7/ipv4/block/192.168.7.64-26",
        '{"state":"confirmed","deleted":false}',
    )


def _peer(peer_ip, **scope):
    return LabPeer("p", {"peerIP": peer_ip, "asNumber": 65000, **scope})


NODES = (LabNode("n1", "10.0.0.1/24"), LabNode("n2", "10.0.0.2/24"), LabNode("n3", "10.0.0.3/24"))


@pytest.mark.parametrize(
    ("mesh", "peers", "node", "expected"),
    [
        (True, (), "n1", ("10.0.0.2", "10.0.0.3")),
        (False, (), "n1", ()),
        (False, (_peer("10.0.0.254"),), "n2", ("10.0.0.254",)),
        (False, (_peer("10.0.0.254:1790"),), "n2", ("10.0.0.254",)),
        (False, (_peer("[fd00::1]:1790"),), "n2", ("fd00::1",)),
        (True, (_peer("10.0.0.9", node="n3"),), "n1", ("10.0.0.2", "10.0.0.3")),
        (True, (_peer("10.0.0.9", node="n3"),), "n3", ("10.0.0.1", "10.0.0.2", "10.0.0.9")),
        (False, (_peer("10.0.0.9", nodeSelector="all()"),), "n3", ("10.0.0.9",)),
        (False, (_peer("10.0.0.9", nodeSelector="has(rack)"),), "n3", ()),
    ],
    ids=["mesh", "no-mesh", "global-peer", "global-peer-port", "v6-bracket-port", "other-node-peer",
         "own-node-peer", "node-selector-matches", "node-selector-misses"],
)  # fmt: skip
def test_expected_peers(mesh, peers, node, expected):
    topo = Topology("t", NODES, bgp_config={"nodeToNodeMeshEnabled": mesh}, peers=peers)
    assert topo.expected_peers(node) == expected


@pytest.mark.parametrize(
    ("nodes", "pods", "error"),
    [
        ((LabNode("a", "10.0.0.1/24"), LabNode("a", "10.0.0.2/24")), (), "unique"),
        ((LabNode("a", "10.0.0.1/24"),), (LabPod("a", "a", "192.168.0.1"),), "unique"),
        ((LabNode("lan", "10.0.0.1/24"),), (), "reserved"),
        ((LabNode("br0", "10.0.0.1/24"),), (), "reserved"),
        ((LabNode("lo", "10.0.0.1/24"),), (), "reserved"),
        ((LabNode("averyveryverylongname", "10.0.0.1/24"),), (), "1-15"),
        ((LabNode("a_b", "10.0.0.1/24"),), (), "1-15"),
        ((LabNode("a", "10.0.0.1/24"),), (LabPod("p", "b", "192.168.0.1"),), "unknown node"),
        ((LabNode("a", "10.0.0.1/24"),), (LabPod("p", "a", "10.0.0.1"),), "addresses must be unique"),
        ((LabNode("a", "10.0.0.1/24"),), (LabPod("p", "a", "192.168.0.256"),), "192.168.0.256"),
        ((LabNode("a", "10.0.0.300/24"),), (), "10.0.0.300"),
    ],
    ids=["dup-node", "pod-named-like-node", "lan", "bridge", "loopback", "too-long", "bad-char", "pod-node",
         "dup-ip", "bad-pod-ip", "bad-node-ip"],
)  # fmt: skip
def test_validate_rejects(nodes, pods, error):
    with pytest.raises(ValueError, match=error):
        topology.validate(Topology("t", nodes, pods=pods))
