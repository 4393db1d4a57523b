"""Router topologies (tor, rr, external), their BGP peerings, FRR config rendering and state (pure)."""

from __future__ import annotations

import json

import pytest

from labs import catalog, routers, state, topologies, topology
from labs.state import LabState, NodeState, RouterState
from labs.topology import LabNode, LabPeer, LabRouter, RouterNeighbor, RouterPort, Topology

RES = "/calico/resources/v3/projectcalico.org"


def _resources(topo: Topology) -> dict[str, dict]:
    return {key: json.loads(value) for key, value in topology.calico_resources(topo)}


# ------------------------------------------------------------------------------------------------- tor


def test_tor_is_two_racks_with_an_as_each_and_a_tor_per_rack():
    topo = catalog.TOPOLOGIES["tor"]()
    assert [(n.name, n.ipv4, n.asn, n.segment, n.labels["rack"]) for n in topo.nodes] == [
        ("node1", "10.0.1.11/24", 65001, "rack1", "rack1"),
        ("node2", "10.0.1.12/24", 65001, "rack1", "rack1"),
        ("node3", "10.0.2.11/24", 65002, "rack2", "rack2"),
        ("node4", "10.0.2.12/24", 65002, "rack2", "rack2"),
    ]
    assert not topo.mesh_enabled
    assert [(r.name, r.asn, r.kind, r.router_id) for r in topo.routers] == [
        ("tor1", 65101, "frr", "10.0.1.1"),
        ("tor2", 65102, "frr", "10.0.2.1"),
    ]
    assert topo.segments == ("rack1", "rack2", "fabric")


def test_tor_bgppeers_select_racks_as_calico_users_write_them():
    resources = _resources(catalog.TOPOLOGIES["tor"]())
    assert resources[f"{RES}/bgppeers/rack1-tor"]["spec"] == {
        "nodeSelector": "rack == 'rack1'",
        "peerIP": "10.0.1.1",
        "asNumber": 65101,
    }
    assert resources[f"{RES}/nodes/node3"]["spec"]["bgp"] == {
        "ipv4Address": "10.0.2.11/24",
        "asNumber": 65002,
    }
    assert resources[f"{RES}/nodes/node3"]["metadata"]["labels"]["rack"] == "rack2"


def test_tor_neighbors_are_its_rack_with_a_default_route_and_the_other_tor():
    tor1 = catalog.TOPOLOGIES["tor"]().routers[0]
    assert [(n.address, n.asn, n.default_originate) for n in tor1.neighbors] == [
        ("10.0.1.11", 65001, True),
        ("10.0.1.12", 65001, True),
        ("10.0.254.2", 65102, False),
    ]


@pytest.mark.parametrize(
    ("count", "racks"), [(2, [1, 1]), (4, [2, 2]), (5, [3, 2])], ids=["one-each", "default", "odd"]
)
def test_tor_spreads_nodes_over_the_racks(count, racks):
    topo = topologies.build_tor(count)
    assert [sum(1 for n in topo.nodes if n.segment == f"rack{r}") for r in (1, 2)] == racks
    for router in topo.routers:
        rack = router.ports[0].segment
        assert {n.address for n in router.neighbors if n.default_originate} == {
            n.address for n in topo.nodes if n.segment == rack
        }


@pytest.mark.parametrize("node", ["node1", "node2", "node3", "node4"])
def test_tor_nodes_expect_only_their_tor(node):
    topo = catalog.TOPOLOGIES["tor"]()
    rack = topo.node(node).labels["rack"]
    assert topo.expected_peers(node) == (f"10.0.{rack[-1]}.1",)


# ------------------------------------------------------------------------------------------------- rr


def test_rr_has_two_labelled_reflectors_in_one_cluster_and_four_clients():
    topo = catalog.TOPOLOGIES["rr"]()
    reflectors = [n for n in topo.nodes if n.rr_cluster_id]
    assert [(n.name, n.labels.get("route-reflector"), n.rr_cluster_id, n.block) for n in reflectors] == [
        ("rr1", "true", "224.0.0.1", ""),
        ("rr2", "true", "224.0.0.1", ""),
    ]
    assert [n.name for n in topo.nodes if not n.rr_cluster_id] == ["node1", "node2", "node3", "node4"]
    assert not topo.mesh_enabled
    resources = _resources(topo)
    assert resources[f"{RES}/nodes/rr1"]["spec"]["bgp"]["routeReflectorClusterID"] == "224.0.0.1"
    assert "routeReflectorClusterID" not in resources[f"{RES}/nodes/node1"]["spec"]["bgp"]
    assert resources[f"{RES}/bgppeers/peer-with-route-reflectors"]["spec"] == {
        "nodeSelector": "!has(route-reflector)",
        "peerSelector": "has(route-reflector)",
    }
    assert resources[f"{RES}/bgppeers/route-reflector-mesh"]["spec"] == {
        "nodeSelector": "has(route-reflector)",
        "peerSelector": "has(route-reflector)",
    }


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ("node1", ("10.0.0.2", "10.0.0.3")),
        ("rr1", ("10.0.0.3", "10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14")),
        ("rr2", ("10.0.0.2", "10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14")),
    ],
)
def test_rr_expected_peers_include_calicos_reverse_peerings(node, expected):
    assert catalog.TOPOLOGIES["rr"]().expected_peers(node) == expected


# ------------------------------------------------------------------------------------------------- selectors


NODES = (
    LabNode("a", "10.0.0.1/24", labels={"rack": "r1"}),
    LabNode("b", "10.0.0.2/24", labels={"rack": "r2"}),
    LabNode("c", "10.0.0.3/24", labels={"rack": "r1", "rr": ""}),
)


@pytest.mark.parametrize(
    ("spec", "node", "expected"),
    [
        ({"nodeSelector": "rack == 'r1'", "peerIP": "10.0.0.9", "asNumber": 1}, "a", ("10.0.0.9",)),
        ({"nodeSelector": "rack == 'r1'", "peerIP": "10.0.0.9", "asNumber": 1}, "b", ()),
        ({"nodeSelector": "!has(rr)", "peerSelector": "has(rr)"}, "a", ("10.0.0.3",)),
        ({"nodeSelector": "!has(rr)", "peerSelector": "has(rr)"}, "c", ("10.0.0.1", "10.0.0.2")),
        ({"nodeSelector": "!has(rr)", "peerSelector": "has(rr)", "reversePeering": "Manual"}, "c", ()),
        ({"node": "b", "peerIP": "10.0.0.1", "asNumber": 64512}, "a", ("10.0.0.2",)),
    ],
    ids=[
        "node-selector",
        "node-selector-misses",
        "peer-selector",
        "reverse",
        "reverse-manual",
        "reverse-peer-ip",
    ],
)
def test_expected_peers_follow_selectors_and_reverse_peerings(spec, node, expected):
    topo = Topology("t", NODES, bgp_config={"nodeToNodeMeshEnabled": False}, peers=(LabPeer("p", spec),))
    assert topo.expected_peers(node) == expected


def test_mesh_leaves_reflectors_out():
    topo = Topology("t", NODES[:2] + (LabNode("c", "10.0.0.3/24", rr_cluster_id="1.1.1.1"),))
    assert topo.expected_peers("a") == ("10.0.0.2",)
    assert topo.expected_peers("c") == ()


# ------------------------------------------------------------------------------------------------- validation


def _with_router(router: LabRouter) -> Topology:
    return Topology("t", (LabNode("n1", "10.0.0.11/24"),), routers=(router,))


@pytest.mark.parametrize(
    ("router", "problem"),
    [
        (LabRouter("averylongnamex", 1, (RouterPort("", "10.0.0.1/24"),)), "router name"),
        (LabRouter("r", 1, (RouterPort("", "10.0.0.1/24"),), kind="bird"), "kind"),
        (LabRouter("r", 1, ()), "no ports"),
        (LabRouter("n1", 1, (RouterPort("", "10.0.0.1/24"),)), "unique"),
        (LabRouter("r", 1, (RouterPort("n1", "10.0.0.1/24"),)), "unique"),
    ],
    ids=["port-name-too-long", "unknown-kind", "no-ports", "clashes-with-node", "segment-clashes-with-node"],
)
def test_invalid_routers_are_refused(router, problem):
    with pytest.raises(ValueError, match=problem):
        topology.validate(_with_router(router))


def test_port_names_fit_ifnamsiz():
    router = LabRouter("tor1", 1, (RouterPort("a", "10.0.0.1/24"), RouterPort("b", "10.0.1.1/24")))
    assert [router.port_ifname(i) for i in range(2)] == ["tor1-0", "tor1-1"]


# ------------------------------------------------------------------------------------------------- FRR config


def test_frr_config_of_a_tor():
    router = LabRouter(
        "tor9",
        65109,
        (RouterPort("rack9", "10.0.9.1/24"),),
        neighbors=(
            RouterNeighbor("10.0.9.11", 65009, description="node1", default_originate=True),
            RouterNeighbor("fd00::5", 65200, password="pw", rr_client=True),
        ),
        networks=("198.51.100.0/24",),
    )
    assert routers.frr_config(router, log_file="/tmp/frr.log").splitlines() == [
        "frr defaults datacenter",
        "hostname tor9",
        "log file /tmp/frr.log informational",
        "!",
        "router bgp 65109",
        " bgp router-id 10.0.9.1",
        " no bgp ebgp-requires-policy",
        " no bgp network import-check",
        " bgp bestpath as-path multipath-relax",
        " neighbor 10.0.9.11 remote-as 65009",
        " neighbor 10.0.9.11 description node1",
        " neighbor 10.0.9.11 timers connect 2",
        " neighbor fd00::5 remote-as 65200",
        " neighbor fd00::5 password pw",
        " neighbor fd00::5 timers connect 2",
        " address-family ipv4 unicast",
        "  network 198.51.100.0/24",
        "  neighbor 10.0.9.11 activate",
        "  neighbor 10.0.9.11 soft-reconfiguration inbound",
        "  neighbor 10.0.9.11 default-originate",
        " exit-address-family",
        " address-family ipv6 unicast",
        "  neighbor fd00::5 activate",
        "  neighbor fd00::5 soft-reconfiguration inbound",
        "  neighbor fd00::5 route-reflector-client",
        " exit-address-family",
        "exit",
        "!",
    ]


def test_frr_config_logs_to_stdout_without_a_file():
    router = catalog.TOPOLOGIES["tor"]().routers[0]
    assert "log stdout informational" in routers.frr_config(router).splitlines()


# ------------------------------------------------------------------------------------------------- state


def test_state_round_trip_with_routers_and_labels(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)
    lab = LabState(name="t", topology="tor")
    lab.nodes.append(
        NodeState("node1", "cbgp-t-node1", "10.0.1.11/24", 65001, "/r", "/l", labels={"rack": "r1"})
    )
    lab.routers.append(
        RouterState("tor1", "cbgp-t-tor1", "frr", 65101, "10.0.1.1/24", "/r/tor1", "cbgp-t-tor1", [5, 6])
    )
    lab.save()
    assert LabState.load("t") == lab
    assert LabState.load("t").router("tor1").pids == [5, 6]
    with pytest.raises(KeyError, match="tor9"):
        lab.router("tor9")


def test_state_files_from_before_routers_still_load(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)
    (tmp_path / "old").mkdir()
    node = {
        "name": "n",
        "netns": "x",
        "ipv4": "10.0.0.1/24",
        "asn": 1,
        "run_dir": "/r",
        "log": "/l",
        "pid": 3,
    }
    (tmp_path / "old" / "state.json").write_text(json.dumps({"name": "old", "nodes": [node]}))
    loaded = LabState.load("old")
    assert loaded.routers == [] and loaded.node("n").labels == {}
