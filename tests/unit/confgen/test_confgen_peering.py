"""Session derivation from BGPPeers (docs/calico-model.md), as tables.

Each case is a small cluster, one node's point of view, and the sessions that node must hold, written as
``name kind peer_as/local_as port passive`` strings so a table row reads like ``calicoctl node status``.
"""

from __future__ import annotations

import pytest

from confgen.calc import intent_for
from confgen.datastore.base import Snapshot
from confgen.intent import NEXT_HOP_AUTO, NEXT_HOP_KEEP, NEXT_HOP_SELF
from confgen.validate import SecretError, SecretRef


def node(name, v4="", v6="", labels=None, asn=None, rr=None):
    bgp = {}
    if v4:
        bgp["ipv4Address"] = v4
    if v6:
        bgp["ipv6Address"] = v6
    if asn is not None:
        bgp["asNumber"] = asn
    if rr is not None:
        bgp["routeReflectorClusterID"] = rr
    return name, {"metadata": {"name": name, "labels": labels or {}}, "spec": {"bgp": bgp}}


def snap(nodes, peers=None, default=None, configs=None):
    bgp_configs = dict(configs or {})
    bgp_configs["default"] = {"spec": {"nodeToNodeMeshEnabled": False, **(default or {})}}
    return Snapshot(
        revision=1,
        resources={
            "Node": dict(nodes),
            "BGPPeer": {name: {"spec": spec} for name, spec in (peers or {}).items()},
            "BGPConfiguration": bgp_configs,
        },
    )


def table(intent):
    kinds = {"global": "G", "node specific": "N", "node-to-node mesh": "M"}
    return [
        f"{p.name} {kinds[p.kind]} {p.peer_as}/{p.local_as} {p.port}{' passive' if p.passive else ''}"
        for p in intent.peers
    ]


# A rack of three workers, two route reflectors and a dual-stack edge node.
CLUSTER = (
    node("w1", "10.0.0.11/24", labels={"rack": "r1"}),
    node("w2", "10.0.0.12/24", labels={"rack": "r1"}),
    node("w3", "10.0.0.13/24", labels={"rack": "r2"}, asn=65003),
    node("rr1", "10.0.0.1/24", labels={"route-reflector": "true"}, rr="224.0.0.1"),
    node("rr2", "10.0.0.2/24", labels={"route-reflector": "true"}, rr="224.0.0.1"),
    node("edge", "10.0.0.20/24", "fd00::20/64", labels={"edge": ""}),
)


@pytest.mark.parametrize(
    ("peers", "me", "expected"),
    [
        pytest.param(
            {"tor": {"peerIP": "10.0.0.254", "asNumber": 65000}},
            "w1",
            ["Global_10_0_0_254 G 65000/64512 179"],
            id="global-peer-applies-to-every-node",
        ),
        pytest.param(
            {"tor": {"node": "w1", "peerIP": "10.0.0.254:1790", "asNumber": 65000}},
            "w1",
            ["Node_10_0_0_254_port_1790 N 65000/64512 1790"],
            id="node-peer-with-a-port",
        ),
        pytest.param(
            {"tor": {"node": "w1", "peerIP": "10.0.0.254:1790", "asNumber": 65000}},
            "w2",
            [],
            id="node-peer-is-not-for-other-nodes",
        ),
        pytest.param(
            {"tor": {"nodeSelector": "rack == 'r1'", "peerIP": "[fd00::fe]:1790", "asNumber": 65000}},
            "edge",
            [],
            id="node-selector-misses",
        ),
        pytest.param(
            {"tor": {"nodeSelector": "has(edge)", "peerIP": "[fd00::fe]:1790", "asNumber": "65000"}},
            "edge",
            ["Node_fd00__fe_port_1790 N 65000/64512 1790"],
            id="ipv6-peer-ip-with-port",
        ),
        pytest.param(
            {"to-w3": {"node": "w1", "peerIP": "10.0.0.13", "asNumber": 65003}},
            "w1",
            ["Node_10_0_0_13 N 65003/64512 179 passive"],
            id="peer-ip-of-a-calico-node-uses-the-lexical-passive-rule",
        ),
        pytest.param(
            {"to-w3": {"node": "w1", "peerIP": "10.0.0.13", "asNumber": 65003}},
            "w3",
            ["Node_10_0_0_11 N 64512/65003 179"],
            id="automatic-reverse-peering-for-a-peer-ip",
        ),
        pytest.param(
            {"to-w3": {"node": "w1", "peerIP": "10.0.0.13", "asNumber": 64999}},
            "w3",
            [],
            id="no-reverse-when-the-as-does-not-match-the-node",
        ),
        pytest.param(
            {"to-w3": {"node": "w1", "peerIP": "10.0.0.13", "asNumber": 65003, "reversePeering": "Manual"}},
            "w3",
            [],
            id="manual-reverse-peering",
        ),
        pytest.param(
            {"racks": {"nodeSelector": "rack == 'r1'", "peerSelector": "rack == 'r2' || has(edge)"}},
            "w1",
            ["Node_10_0_0_13 N 65003/64512 179 passive", "Node_10_0_0_20 N 64512/64512 179 passive"],
            id="peer-selector-one-session-per-selected-node",
        ),
        pytest.param(
            {"racks": {"nodeSelector": "rack == 'r1'", "peerSelector": "rack == 'r2' || has(edge)"}},
            "edge",
            ["Node_10_0_0_11 N 64512/64512 179", "Node_10_0_0_12 N 64512/64512 179"],
            id="peer-selector-reverse-sessions-only-where-both-have-the-family",
        ),
        pytest.param(
            {"edges": {"nodeSelector": "has(edge)", "peerSelector": "has(edge) || rack == 'r2'"}},
            "edge",
            ["Node_10_0_0_13 N 65003/64512 179"],
            id="peer-selector-never-selects-myself",
        ),
        pytest.param(
            {"all": {"peerSelector": "rack == 'r1'"}},
            "w3",
            ["Global_10_0_0_11 G 64512/65003 179", "Global_10_0_0_12 G 64512/65003 179"],
            id="global-peer-selector",
        ),
        pytest.param(
            {"all": {"peerSelector": "rack == 'r1'"}},
            "w1",
            # Every node peers with the r1 nodes, so an r1 node gets reverse sessions to every node;
            # the global peering to w2 keeps its key (and its Global_ name).
            [
                "Node_10_0_0_1 N 64512/64512 179",
                "Node_10_0_0_2 N 64512/64512 179 passive",
                "Global_10_0_0_12 G 64512/64512 179 passive",
                "Node_10_0_0_13 N 65003/64512 179 passive",
                "Node_10_0_0_20 N 64512/64512 179 passive",
            ],
            id="global-peer-selector-reverse-covers-every-node",
        ),
        pytest.param(
            {
                "a-node": {"node": "w1", "peerIP": "10.0.0.254", "asNumber": 65001},
                "b-global": {"peerIP": "10.0.0.254", "asNumber": 65000},
            },
            "w1",
            ["Global_10_0_0_254 G 65000/64512 179"],
            id="a-global-peering-beats-a-node-one-with-the-same-key",
        ),
        pytest.param(
            {
                "a": {"node": "w1", "peerIP": "10.0.0.254", "asNumber": 65001},
                "b": {"nodeSelector": "rack == 'r1'", "peerIP": "10.0.0.254", "asNumber": 65002},
            },
            "w1",
            ["Node_10_0_0_254 N 65001/64512 179"],
            id="first-writer-by-name-wins-a-key",
        ),
        pytest.param(
            {"tor": {"peerIP": "10.0.0.254", "asNumber": 65000, "localASNumber": 65100}},
            "w1",
            ["Global_10_0_0_254 G 65000/65100 179"],
            id="local-as-override",
        ),
        pytest.param(
            {"to-w3": {"node": "w1", "peerIP": "10.0.0.13", "asNumber": 65003, "localASNumber": 65100}},
            "w3",
            ["Node_10_0_0_11 N 65100/65003 179"],
            id="reverse-peering-expects-the-forward-local-as",
        ),
    ],
)
def test_expansion(peers, me, expected):
    intent = intent_for(snap(CLUSTER, peers), me)
    assert table(intent) == expected
    assert intent.warnings == ()


def test_ports_follow_the_listen_port_configuration():
    configs = {"node.w3": {"spec": {"listenPort": 1791}}}
    peers = {
        "racks": {"nodeSelector": "rack == 'r1'", "peerSelector": "rack == 'r2'"},
        "to-w2": {"node": "w1", "peerIP": "10.0.0.12", "asNumber": 64512},
    }
    intent = intent_for(snap(CLUSTER, peers, default={"listenPort": 1790}, configs=configs), "w1")
    # A configured port is part of Calico's session name; a peerIP without a port towards a Calico
    # node (same IP and AS) takes that node's listen port.
    assert table(intent) == [
        "Node_10_0_0_12_port_1790 N 64512/64512 1790 passive",
        "Node_10_0_0_13_port_1791 N 65003/64512 1791 passive",
    ]


def test_one_session_per_address_even_across_ports():
    peers = {
        "a": {"peerIP": "10.0.0.254", "asNumber": 65000},
        "b": {"peerIP": "10.0.0.254:1790", "asNumber": 65000},
    }
    intent = intent_for(snap(CLUSTER, peers), "w1")
    assert table(intent) == ["Global_10_0_0_254 G 65000/64512 179"]
    assert intent.warnings == (
        "BGPPeer b: a session with 10.0.0.254 already comes from BGPPeer a; ExaBGP holds one session per "
        "address, so the one on port 1790 is skipped",
    )


def test_explicit_peering_replaces_the_mesh_session_to_the_same_address():
    peers = {"to-w2": {"node": "w1", "peerIP": "10.0.0.12", "asNumber": 64512, "keepaliveTime": "10s"}}
    nodes = CLUSTER[:3]
    intent = intent_for(snap(nodes, peers, default={"nodeToNodeMeshEnabled": True}), "w1")
    assert table(intent) == [
        "Node_10_0_0_12 N 64512/64512 179 passive",
        "Mesh_10_0_0_13 M 65003/64512 179 passive",
    ]
    assert intent.peers[0].hold_time == 30 and intent.warnings == ()


def test_route_reflectors_and_clients():
    peers = {
        "to-rr": {"nodeSelector": "!has(route-reflector)", "peerSelector": "has(route-reflector)"},
        "rr-mesh": {"nodeSelector": "has(route-reflector)", "peerSelector": "has(route-reflector)"},
    }
    nodes = CLUSTER[:5]
    rr1 = intent_for(snap(nodes, peers, default={"nodeToNodeMeshEnabled": True}), "rr1")
    assert rr1.rr_cluster_id == "224.0.0.1"
    # No mesh on a reflector; iBGP peers outside the cluster id are clients; eBGP (w3) never is.
    assert [(p.name, p.kind, p.rr_client, p.rr_cluster_id) for p in rr1.peers] == [
        ("Node_10_0_0_2", "node specific", False, ""),
        ("Node_10_0_0_11", "node specific", True, "224.0.0.1"),
        ("Node_10_0_0_12", "node specific", True, "224.0.0.1"),
        ("Node_10_0_0_13", "node specific", False, ""),
    ]
    w1 = intent_for(snap(nodes, peers, default={"nodeToNodeMeshEnabled": True}), "w1")
    # A client meshes with the other clients but not with the reflectors; it peers with them instead.
    assert table(w1) == [
        "Node_10_0_0_1 N 64512/64512 179",
        "Node_10_0_0_2 N 64512/64512 179 passive",
        "Mesh_10_0_0_12 M 64512/64512 179 passive",
        "Mesh_10_0_0_13 M 65003/64512 179 passive",
    ]
    assert not any(p.rr_client for p in w1.peers) and w1.rr_cluster_id == ""


@pytest.mark.parametrize(
    ("spec", "me", "expected"),
    [
        ({"peerIP": "10.0.0.254", "asNumber": 65000}, "w1", NEXT_HOP_AUTO),
        ({"peerIP": "10.0.0.254", "asNumber": 65000, "keepOriginalNextHop": True}, "w1", NEXT_HOP_KEEP),
        (
            {"peerIP": "10.0.0.254", "asNumber": 64512, "keepOriginalNextHop": True},
            "w1",
            NEXT_HOP_AUTO,
        ),  # iBGP
        ({"peerIP": "10.0.0.254", "asNumber": 64512, "nextHopMode": "Keep"}, "w1", NEXT_HOP_KEEP),
        (
            {"peerIP": "10.0.0.254", "asNumber": 65000, "nextHopMode": "Self", "keepOriginalNextHop": True},
            "w1",
            NEXT_HOP_SELF,
        ),
        (
            {"node": "w1", "peerIP": "10.0.0.13", "asNumber": 65003, "nextHopMode": "Self"},
            "w1",
            NEXT_HOP_SELF,
        ),
        # the reverse side does not inherit the forward side's policy
        (
            {"node": "w1", "peerIP": "10.0.0.13", "asNumber": 65003, "nextHopMode": "Self"},
            "w3",
            NEXT_HOP_AUTO,
        ),
    ],
)
def test_next_hop_mode(spec, me, expected):
    (session,) = intent_for(snap(CLUSTER, {"p": spec}), me).peers
    assert session.next_hop_mode == expected


def test_session_settings_forward_and_reverse():
    spec = {
        "node": "w1",
        "peerIP": "10.0.0.13",
        "asNumber": 65003,
        "keepaliveTime": "1s",
        "maxRestartTime": "5m",
        "ttlSecurity": 1,
        "sourceAddress": "None",
        "numAllowedLocalASNumbers": 2,
        "filters": ["only-pods"],
    }
    (forward,) = intent_for(snap(CLUSTER, {"p": spec}), "w1").peers
    (reverse,) = intent_for(snap(CLUSTER, {"p": spec}), "w3").peers
    for session in (forward, reverse):  # session-wide settings apply at both ends
        assert (session.keepalive_time, session.hold_time, session.restart_time) == (1, 3, 300)
        assert (session.ttl_security, session.source_address, session.resource) == (1, "None", "p")
    assert (forward.num_allow_local_as, forward.filters, forward.calico_node) == (2, ("only-pods",), "w3")
    assert (reverse.num_allow_local_as, reverse.filters, reverse.calico_node) == (0, (), "w1")
    assert forward.local_address == "10.0.0.11" and reverse.local_address == "10.0.0.13"


def test_defaults_of_a_plain_peering():
    (session,) = intent_for(snap(CLUSTER, {"p": {"peerIP": "10.0.0.254", "asNumber": 65000}}), "w1").peers
    assert (session.hold_time, session.keepalive_time, session.restart_time, session.ttl_security) == (
        90,
        0,
        120,
        0,
    )
    assert (session.source_address, session.password, session.calico_node, session.passive) == (
        "UseNodeIP",
        "",
        "",
        False,
    )


def test_peer_of_a_family_this_node_lacks_is_reported():
    peers = {"v6": {"node": "w1", "peerIP": "fd00::fe", "asNumber": 65000}}
    intent = intent_for(snap(CLUSTER, peers), "w1")
    assert intent.peers == ()
    assert intent.warnings == ("BGPPeer v6: this node has no ipv6 address to peer with fd00::fe",)


SECRET = SecretRef("bgp", "tor")
PASSWORD = {"secretKeyRef": {"name": "bgp", "key": "tor"}}


@pytest.mark.parametrize(
    ("value", "password", "warning"),
    [
        ("s3cret", "s3cret", None),
        ('q"uo{te};#', 'q"uo{te};#', None),  # rendered base64-encoded: any printable password is fine
        ("s3cret\n", None, "holds a control or non-ASCII character (a trailing newline?)"),
        ("pässword", None, "holds a control or non-ASCII character"),
        ("x" * 81, None, "is 81 characters long (TCP-MD5 allows 80)"),
        ("", None, "is empty"),
        (SecretError("/secrets/bgp/tor does not exist"), None, "/secrets/bgp/tor does not exist"),
        (None, None, "no secrets directory is configured"),
    ],
    ids=["plain", "punctuation", "newline", "non-ascii", "too-long", "empty", "missing-file", "no-directory"],
)
def test_passwords_from_secrets(value, password, warning):
    peers = {
        "a-tor": {
            "peerSelector": "rack == 'r2'",
            "password": {"secretKeyRef": {"name": "bgp", "key": "tor"}},
        },
        "b-plain": {"peerIP": "10.0.0.254", "asNumber": 65000},
    }
    secrets = {} if value is None else {SECRET: value}
    intent = intent_for(snap(CLUSTER, peers), "w1", secrets=secrets)
    if warning is None:
        assert [(p.address, p.password) for p in intent.peers] == [
            ("10.0.0.13", password),
            ("10.0.0.254", ""),
        ]
        assert intent.warnings == ()
    else:  # an error for that peering alone
        assert [(p.address, p.password) for p in intent.peers] == [("10.0.0.254", "")]
        assert intent.warnings == (
            f"BGPPeer a-tor: password secret bgp/tor: {warning}; its sessions are skipped",
        )


def test_a_peering_without_its_secret_still_holds_its_key():
    peers = {
        "a-tor": {"node": "w1", "peerIP": "10.0.0.254", "asNumber": 65000, "password": PASSWORD},
        "b-tor": {"nodeSelector": "all()", "peerIP": "10.0.0.254", "asNumber": 65000},
    }
    intent = intent_for(snap(CLUSTER, peers), "w1", secrets={SECRET: SecretError("gone")})
    assert intent.peers == ()  # b-tor must not silently replace a-tor without its password


def test_mesh_password_and_restart_time():
    default = {
        "nodeToNodeMeshEnabled": True,
        "nodeMeshPassword": {"secretKeyRef": {"name": "mesh", "key": "pw"}},
        "nodeMeshMaxRestartTime": "300s",
    }
    nodes = CLUSTER[:3]
    intent = intent_for(snap(nodes, default=default), "w1", secrets={SecretRef("mesh", "pw"): "m3sh"})
    assert [(p.name, p.password, p.restart_time) for p in intent.peers] == [
        ("Mesh_10_0_0_12", "m3sh", 300),
        ("Mesh_10_0_0_13", "m3sh", 300),
    ]
    broken = intent_for(snap(nodes, default=default), "w1", secrets={})
    assert broken.peers == ()
    assert broken.warnings == (
        "BGPConfiguration default: password secret mesh/pw: no secrets directory is configured; "
        "its sessions are skipped",
    )


def test_the_intent_carries_the_filters_its_sessions_name():
    only_pods = {"exportV4": [{"action": "Accept", "cidr": "10.65.0.0/16", "matchOperator": "In"}]}
    snapshot = snap(
        CLUSTER,
        {
            "a": {"node": "w1", "peerIP": "10.0.0.254", "asNumber": 65000, "filters": ["only-pods", "typo"]},
            "b": {
                "node": "w1",
                "peerIP": "10.0.0.253",
                "asNumber": 65000,
                "filters": ["only-pods", "broken"],
            },
        },
    )
    snapshot.resources["BGPFilter"] = {
        "only-pods": {"spec": only_pods},
        "unused": {"spec": only_pods},
        "broken": {"spec": {"exportV4": [{"action": "Drop"}]}},
    }
    intent = intent_for(snapshot, "w1")
    assert [f.name for f in intent.bgp_filters] == ["only-pods"]
    assert intent.bgp_filters[0].export_v4[0].cidr == "10.65.0.0/16"
    assert intent.warnings == (
        "BGPFilter broken: spec.exportV4[0].action 'Drop' is not one of Accept, Reject",
        "BGPPeer a: spec.filters names typo, which is no BGPFilter",
    )
    assert intent_for(snapshot, "w2").bgp_filters == ()  # none of w2's sessions uses a filter
