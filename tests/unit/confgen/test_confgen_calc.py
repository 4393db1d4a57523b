"""The pure calculation: mesh rules, passive rule, AS selection, pools, blocks and degraded inputs."""

from __future__ import annotations

import pytest

from confgen.calc import intent_for, mesh_name, router_id_setting
from confgen.datastore.base import Snapshot
from confgen.intent import MESH, NodeIntent, PeerIntent, PoolIntent, PrefixAdvertisement


def node(name, v4="", v6="", asn=None, rr=None):
    bgp = {}
    if v4:
        bgp["ipv4Address"] = v4
    if v6:
        bgp["ipv6Address"] = v6
    if asn is not None:
        bgp["asNumber"] = asn
    if rr is not None:
        bgp["routeReflectorClusterID"] = rr
    return name, {"kind": "Node", "metadata": {"name": name}, "spec": {"bgp": bgp}}


def snap(*nodes, default=None, configs=None, pools=None, affinities=None):
    bgp_configs = dict(configs or {})
    if default is not None:
        bgp_configs["default"] = {"spec": default}
    return Snapshot(
        revision=1,
        resources={
            "Node": dict(nodes),
            "BGPConfiguration": bgp_configs,
            "IPPool": {name: {"spec": spec} for name, spec in (pools or {}).items()},
        },
        affinities=affinities or {},
    )


def sessions(intent):
    """(address, passive, peer_as, local_as, port) per peer, in intent order."""
    return [(p.address, p.passive, p.peer_as, p.local_as, p.port) for p in intent.peers]


THREE = (node("node1", "10.0.0.11/24"), node("node2", "10.0.0.12/24"), node("node3", "10.0.0.13/24"))


def test_three_node_mesh_from_node1_is_complete():
    intent = intent_for(snap(*THREE), "node1")
    assert intent.router_id == "10.0.0.11"
    assert intent.local_as == 64512
    assert (intent.ipv4_address, intent.ipv4_network) == ("10.0.0.11", "10.0.0.0/24")
    assert intent.peers == (
        PeerIntent(
            "Mesh_10_0_0_12", "10.0.0.12", "ipv4", 64512, 64512, "10.0.0.11", MESH, 179, True, "node2"
        ),
        PeerIntent(
            "Mesh_10_0_0_13", "10.0.0.13", "ipv4", 64512, 64512, "10.0.0.11", MESH, 179, True, "node3"
        ),
    )
    assert intent.warnings == ()


@pytest.mark.parametrize(
    ("me", "expected"),
    [
        ("node1", [("10.0.0.12", True), ("10.0.0.13", True)]),
        ("node2", [("10.0.0.11", False), ("10.0.0.13", True)]),
        ("node3", [("10.0.0.11", False), ("10.0.0.12", False)]),
    ],
)
def test_exactly_one_side_of_each_mesh_pair_is_passive(me, expected):
    intent = intent_for(snap(*THREE), me)
    assert [(p.address, p.passive) for p in intent.peers] == expected


@pytest.mark.parametrize(
    ("my_ip", "peer_ip", "passive"),
    [
        ("10.0.0.1", "10.0.0.2", True),
        ("10.0.0.2", "10.0.0.1", False),
        # Lexical, not numeric: "10.0.0.12" < "10.0.0.9" as strings, so .9 is the passive side.
        ("10.0.0.9", "10.0.0.12", False),
        ("10.0.0.12", "10.0.0.9", True),
        ("9.0.0.1", "10.0.0.1", False),
        ("fd00::9", "fd00::a", True),
        ("fd00::a", "fd00::10", False),
    ],
)
def test_passive_rule_is_calicos_string_compare(my_ip, peer_ip, passive):
    family = "v6" if ":" in my_ip else "v4"
    me = node("me", **{family: my_ip})
    peer = node("peer", **{family: peer_ip})
    intent = intent_for(snap(me, peer), "me", router_id="192.0.2.1")
    assert [(p.address, p.passive) for p in intent.peers] == [(peer_ip, passive)]
    # ...and the other end always computes the opposite.
    other = intent_for(snap(me, peer), "peer", router_id="192.0.2.2")
    assert [(p.address, p.passive) for p in other.peers] == [(my_ip, not passive)]


@pytest.mark.parametrize(
    ("nodes", "default", "expected"),
    [
        pytest.param(
            (node("me", "10.0.0.1", asn=65001), node("b", "10.0.0.2"), node("c", "10.0.0.3", asn="65003")),
            None,
            [("10.0.0.2", True, 64512, 65001, 179), ("10.0.0.3", True, 65003, 65001, 179)],
            id="per-node-as",
        ),
        pytest.param(
            (node("me", "10.0.0.1"), node("b", "10.0.0.2", asn="1.10")),
            {"asNumber": 65000},
            [("10.0.0.2", True, 65546, 65000, 179)],
            id="global-as-and-asdot-peer",
        ),
        pytest.param(
            (node("me", "10.0.0.1"), node("b", "10.0.0.2")),
            {"listenPort": 1790},
            [("10.0.0.2", True, 64512, 64512, 1790)],
            id="global-listen-port",
        ),
        pytest.param(
            (node("me", "10.0.0.1"), node("b", "10.0.0.2")),
            {"nodeToNodeMeshEnabled": False},
            [],
            id="mesh-disabled",
        ),
        pytest.param(
            (node("me", "10.0.0.1", rr="224.0.0.1"), node("b", "10.0.0.2")),
            None,
            [],
            id="i-am-a-route-reflector",
        ),
        pytest.param(
            (node("me", "10.0.0.1"), node("rr", "10.0.0.2", rr="224.0.0.1"), node("c", "10.0.0.3")),
            None,
            [("10.0.0.3", True, 64512, 64512, 179)],
            id="peer-is-a-route-reflector",
        ),
        pytest.param(
            (node("me", "10.0.0.1"), node("twin", "10.0.0.1"), node("c", "10.0.0.3")),
            None,
            [("10.0.0.3", True, 64512, 64512, 179)],
            id="same-ip-is-myself",
        ),
        pytest.param(
            (node("me", "10.0.0.1"), node("v6only", v6="fd00::2"), node("bare"), node("c", "10.0.0.3")),
            None,
            [("10.0.0.3", True, 64512, 64512, 179)],
            id="peers-without-an-ipv4-address",
        ),
        pytest.param(
            (node("me", "10.0.0.5"), node("a", "10.0.0.4/24"), node("b", "10.0.0.40/8")),
            None,
            [("10.0.0.4", False, 64512, 64512, 179), ("10.0.0.40", False, 64512, 64512, 179)],
            id="sorted-by-address",
        ),
    ],
)
def test_mesh_rules(nodes, default, expected):
    assert sessions(intent_for(snap(*nodes, default=default), "me")) == expected


def test_per_node_listen_port_applies_to_that_nodes_sessions():
    configs = {"node.b": {"spec": {"listenPort": 1791}}, "node.me": {"spec": {"listenPort": 1792}}}
    intent = intent_for(
        snap(node("me", "10.0.0.1"), node("b", "10.0.0.2"), node("c", "10.0.0.3"), configs=configs), "me"
    )
    assert [(p.address, p.port) for p in intent.peers] == [("10.0.0.2", 1791), ("10.0.0.3", 179)]
    assert intent.listen_port == 1792


def test_duplicate_peer_address_keeps_the_first_node_by_name():
    intent = intent_for(snap(node("me", "10.0.0.1"), node("b", "10.0.0.2"), node("a", "10.0.0.2")), "me")
    assert [(p.address, p.calico_node) for p in intent.peers] == [("10.0.0.2", "a")]
    assert intent.warnings == ("Node b: address 10.0.0.2 is also used by Node a; no mesh session to b",)


def test_dual_stack_meshes_ipv6_only_where_both_ends_have_it():
    nodes = (
        node("me", "10.0.0.1/24", "fd00::1/64"),
        node("b", "10.0.0.2/24", "fd00::2/64"),
        node("c", "10.0.0.3/24"),
    )
    intent = intent_for(snap(*nodes), "me")
    assert [(p.name, p.family, p.local_address, p.passive) for p in intent.peers] == [
        ("Mesh_10_0_0_2", "ipv4", "10.0.0.1", True),
        ("Mesh_10_0_0_3", "ipv4", "10.0.0.1", True),
        ("Mesh_fd00__2", "ipv6", "fd00::1", True),
    ]
    assert (intent.ipv6_address, intent.ipv6_network) == ("fd00::1", "fd00::/64")
    assert intent.families == ("ipv4", "ipv6")
    assert intent.router_id == "10.0.0.1"


@pytest.mark.parametrize(
    ("nodes", "router_id", "warning"),
    [
        ((node("b", "10.0.0.2"),), None, "Node me: not found in the datastore; no BGP sessions"),
        (
            (node("me"), node("b", "10.0.0.2")),
            None,
            "Node me: spec.bgp has no ipv4Address or ipv6Address; no BGP sessions",
        ),
        (
            (node("me", v6="fd00::1"), node("b", v6="fd00::2")),
            None,
            "Node me: no IPv4 address to use as router id (set CALICO_ROUTER_ID); no BGP sessions",
        ),
    ],
    ids=["missing", "no-address", "ipv6-only-without-router-id"],
)
def test_degraded_node_gets_no_sessions_and_a_warning(nodes, router_id, warning):
    intent = intent_for(snap(*nodes), "me", router_id=router_id)
    assert intent.peers == ()
    assert intent.warnings == (warning,)
    assert intent.node == "me"
    assert intent.local_as == 64512


def test_router_id_override():
    nodes = (node("me", v6="fd00::1"), node("b", v6="fd00::2"))
    intent = intent_for(snap(*nodes), "me", router_id="192.0.2.7")
    assert intent.router_id == "192.0.2.7"
    assert [(p.address, p.family) for p in intent.peers] == [("fd00::2", "ipv6")]
    assert intent_for(snap(*THREE), "node1", router_id="192.0.2.7").router_id == "192.0.2.7"
    with pytest.raises(ValueError):
        intent_for(snap(*THREE), "node1", router_id="fd00::1")


def test_pools_and_local_blocks():
    pools = {
        "z-v6": {"cidr": "fd00:10:65::/48"},
        "b": {"cidr": "10.66.0.0/16", "vxlanMode": "Always", "disableBGPExport": True},
        "a": {"cidr": "10.65.0.0/16", "ipipMode": "CrossSubnet", "disabled": True},
    }
    affinities = {
        "10.65.10.0/26": {"state": "confirmed"},
        "10.65.2.0/26": {},  # legacy: no state = confirmed
        "10.65.3.0/26": {"state": "pending"},
        "10.65.4.0/26": {"state": "pendingDeletion"},
        "10.65.5.7/32": {"state": "confirmed"},  # single-address "block": never announced as a block
        "fd00:10:65::/122": {"state": "confirmed"},
        "fd00:10:65::1/128": {"state": "confirmed"},
    }
    intent = intent_for(snap(*THREE, pools=pools, affinities=affinities), "node1")
    assert intent.pools == (
        PoolIntent("10.65.0.0/16", "CrossSubnet", "Never", False, True),
        PoolIntent("10.66.0.0/16", "Never", "Always", True, False),
        PoolIntent("fd00:10:65::/48"),
    )
    assert intent.local_blocks == ("10.65.2.0/26", "10.65.10.0/26", "fd00:10:65::/122")


def test_invalid_resources_become_warnings_and_are_skipped():
    nodes = (*THREE, ("node4", {"spec": {"bgp": {"ipv4Address": '10.0.0.14"; }'}}}))
    pools = {"bad": {"cidr": "10.0.0.300/24"}, "good": {"cidr": "10.65.0.0/16"}}
    intent = intent_for(snap(*nodes, pools=pools, default={"asNumber": 0}), "node1")
    assert [p.address for p in intent.peers] == ["10.0.0.12", "10.0.0.13"]
    assert [p.cidr for p in intent.pools] == ["10.65.0.0/16"]
    assert intent.local_as == 64512
    assert intent.warnings == (
        "BGPConfiguration default: spec.asNumber 0 is not an AS number (1-4294967295 or asdot X.Y)",
        "Node node4: spec.bgp.ipv4Address '10.0.0.14\"; }' is not an IP address or address/prefix",
        "IPPool bad: spec.cidr '10.0.0.300/24' is not an IP network",
    )


def test_intent_equality_ignores_warnings_only():
    a = intent_for(snap(*THREE), "node1")
    b = intent_for(snap(*THREE, pools={"bad": {"cidr": "nope"}}), "node1")
    assert a == b and a.warnings != b.warnings
    c = intent_for(snap(*THREE[:2]), "node1")
    assert a != c


@pytest.mark.parametrize(
    ("address", "name"),
    [
        ("10.0.0.12", "Mesh_10_0_0_12"),
        ("fd00::12", "Mesh_fd00__12"),
        ("2001:db8:0:1::5", "Mesh_2001_db8_0_1__5"),
    ],
)
def test_mesh_name(address, name):
    assert mesh_name(address) == name


def test_cluster_settings_reach_the_intent():
    default = {
        "bindMode": "NodeIP",
        "logSeverityScreen": "Debug",
        "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}],
        "serviceExternalIPs": [{"cidr": "192.0.2.0/24"}, {"cidr": "fd00:e::/64"}],
        "serviceLoadBalancerIPs": [{"cidr": "198.51.100.0/24"}],
        "communities": [{"name": "pods", "value": "64512:100"}],
        "prefixAdvertisements": [{"cidr": "10.65.0.0/16", "communities": ["pods", "64512:1:1"]}],
    }
    configs = {"node.node3": {"spec": {"logSeverityScreen": "Error", "prefixAdvertisements": []}}}
    intent = intent_for(snap(*THREE, default=default, configs=configs), "node1")
    assert intent.prefix_advertisements == (
        PrefixAdvertisement("10.65.0.0/16", ("64512:100",), ("64512:1:1",)),
    )
    assert intent.service_cluster_ips == ("10.96.0.0/12",)
    assert intent.service_external_ips == ("192.0.2.0/24", "fd00:e::/64")
    assert intent.service_loadbalancer_ips == ("198.51.100.0/24",)
    assert (intent.bind_mode, intent.log_severity, intent.rr_cluster_id) == ("NodeIP", "Debug", "")
    assert intent.listen_addresses == ("10.0.0.11",)
    node3 = intent_for(snap(*THREE, default=default, configs=configs), "node3")
    assert (node3.log_severity, node3.prefix_advertisements) == ("Error", ())


@pytest.mark.parametrize(
    ("bind_mode", "v4", "v6", "expected"),
    [
        ("None", "10.0.0.1", "", ("0.0.0.0",)),
        ("None", "10.0.0.1", "fd00::1", ("0.0.0.0", "fd00::1")),
        ("None", "", "fd00::1", ("fd00::1",)),
        ("NodeIP", "10.0.0.1", "fd00::1", ("10.0.0.1", "fd00::1")),
        ("NodeIP", "", "", ()),
    ],
)
def test_listen_addresses(bind_mode, v4, v6, expected):
    intent = NodeIntent(
        node="n", router_id="", local_as=1, ipv4_address=v4, ipv6_address=v6, bind_mode=bind_mode
    )
    assert intent.listen_addresses == expected


def test_a_missing_node_still_carries_the_cluster_settings():
    intent = intent_for(snap(default={"logSeverityScreen": "Warning", "bindMode": "NodeIP"}), "ghost")
    assert (intent.log_severity, intent.bind_mode, intent.peers) == ("Warning", "NodeIP", ())


def test_intents_are_hashable_values():
    intent = intent_for(snap(*THREE, default={"prefixAdvertisements": [{"cidr": "10.0.0.0/8"}]}), "node1")
    assert hash(intent) == hash(
        intent_for(snap(*THREE, default={"prefixAdvertisements": [{"cidr": "10.0.0.0/8"}]}), "node1")
    )
    assert intent.gtsm_peers == ()


@pytest.mark.parametrize(
    ("value", "node", "expected"),
    [
        (None, "node-1", None),
        ("", "node-1", None),
        ("192.0.2.7", "node-1", "192.0.2.7"),
        ("hash", "node-1", "53.151.27.230"),  # sha256("node-1") starts 53 151 27 230
        ("hash", "node-18", "213.194.139.227"),  # starts 245: moved below 224 (calico#5146)
    ],
)
def test_router_id_setting(value, node, expected):
    assert router_id_setting(value, node) == expected


def test_router_id_setting_refuses_non_ipv4():
    with pytest.raises(ValueError):
        router_id_setting("fd00::1", "node-1")
