"""BFD's configuration: BGPPeer ``failureDetectionMode`` (Calico Enterprise's field and values) and the mesh's
``nodeMeshFailureDetectionMode`` (our extension), through parsing, the model and the intent's ``bfd`` flag;
BFD is no ExaBGP config, so the rendered file does not change."""

from __future__ import annotations

from dataclasses import replace

import pytest

from confgen.bgpconfig import parse_bgp_configuration
from confgen.bgppeer import parse_bgp_peer
from confgen.calc import intent_for
from confgen.datastore.base import Snapshot
from confgen.model import parse_snapshot
from confgen.render import render
from confgen.resources import prepare
from confgen.validate import ValidationError

TOR = {"peerIP": "10.0.0.1", "asNumber": 65000}


def peer(**spec):
    return {"kind": "BGPPeer", "metadata": {"name": "tor"}, "spec": {**TOR, **spec}}


@pytest.mark.parametrize(
    "spec, mode",
    [
        pytest.param({}, "None", id="absent"),
        pytest.param({"failureDetectionMode": "None"}, "None", id="None"),
        pytest.param({"failureDetectionMode": ""}, "None", id="empty"),
        pytest.param({"failureDetectionMode": "BFDIfDirectlyConnected"}, "BFDIfDirectlyConnected", id="BFD"),
    ],
)
def test_failure_detection_mode_values(spec, mode):
    assert parse_bgp_peer("tor", peer(**spec)).failure_detection_mode == mode


@pytest.mark.parametrize(
    "value, message",
    [
        ("BFD", "spec.failureDetectionMode 'BFD' is not one of None, BFDIfDirectlyConnected"),
        ("bfdifdirectlyconnected", "spec.failureDetectionMode 'bfdifdirectlyconnected' is not one of None, "
         "BFDIfDirectlyConnected"),
        (True, "spec.failureDetectionMode True is not one of None, BFDIfDirectlyConnected"),
    ],
)  # fmt: skip
def test_a_bad_failure_detection_mode_names_the_field(value, message):
    with pytest.raises(ValidationError) as info:
        parse_bgp_peer("tor", peer(failureDetectionMode=value))
    assert str(info.value) == f"BGPPeer tor: {message}"


@pytest.mark.parametrize(
    "spec, mode",
    [
        pytest.param({}, None, id="absent"),
        pytest.param({"nodeMeshFailureDetectionMode": "None"}, "None", id="None"),
        pytest.param(
            {"nodeMeshFailureDetectionMode": "BFDIfDirectlyConnected"}, "BFDIfDirectlyConnected", id="BFD"
        ),
    ],
)
def test_the_mesh_switch(spec, mode):
    parsed = parse_bgp_configuration("default", {"spec": spec})
    assert parsed.node_mesh_failure_detection_mode == mode


def test_a_bad_mesh_switch_names_the_field():
    with pytest.raises(ValidationError) as info:
        parse_bgp_configuration("default", {"spec": {"nodeMeshFailureDetectionMode": "Always"}})
    assert str(info.value) == (
        "BGPConfiguration default: spec.nodeMeshFailureDetectionMode 'Always' is not one of None, "
        "BFDIfDirectlyConnected"
    )


def snapshot(peer_spec=None, default=None):
    nodes = {
        name: {"metadata": {"name": name}, "spec": {"bgp": {"ipv4Address": address}}}
        for name, address in (("node1", "10.0.0.11/24"), ("node2", "10.0.0.12/24"))
    }
    resources = {
        "Node": nodes,
        "BGPConfiguration": {"default": {"spec": {"asNumber": 64512, **(default or {})}}},
        "BGPPeer": {} if peer_spec is None else {"tor": {"spec": {**TOR, **peer_spec}}},
    }
    return Snapshot(revision=1, resources=resources)


def bfd_flags(intent):
    return {p.address: p.bfd for p in intent.peers}


@pytest.mark.parametrize(
    "peer_spec, default, flags",
    [
        pytest.param({}, {}, {"10.0.0.1": False, "10.0.0.12": False}, id="nothing asked"),
        pytest.param(
            {"failureDetectionMode": "BFDIfDirectlyConnected"}, {}, {"10.0.0.1": True, "10.0.0.12": False},
            id="the BGPPeer only",
        ),
        pytest.param(
            {}, {"nodeMeshFailureDetectionMode": "BFDIfDirectlyConnected"},
            {"10.0.0.1": False, "10.0.0.12": True}, id="the mesh only",
        ),
    ],
)  # fmt: skip
def test_the_intent_says_which_sessions_ask_for_bfd(peer_spec, default, flags):
    assert bfd_flags(intent_for(snapshot(peer_spec, default), "node1")) == flags


def test_reverse_peerings_carry_bfd_as_a_session_wide_setting():
    resources = snapshot().resources
    resources["BGPPeer"] = {
        "n1-to-n2": {"spec": {"node": "node1", "peerSelector": "kubernetes.io/hostname == 'node2'",
                              "failureDetectionMode": "BFDIfDirectlyConnected"}},
    }  # fmt: skip
    resources["Node"]["node2"]["metadata"]["labels"] = {"kubernetes.io/hostname": "node2"}
    resources["BGPConfiguration"]["default"]["spec"]["nodeToNodeMeshEnabled"] = False
    reverse = intent_for(Snapshot(revision=1, resources=resources), "node2")
    assert bfd_flags(reverse) == {"10.0.0.11": True}


def test_a_bad_mode_keeps_the_peers_last_good_configuration():
    good, warnings = parse_snapshot(snapshot({"failureDetectionMode": "BFDIfDirectlyConnected"}))
    assert warnings == [] and good.bgp_peers["tor"].failure_detection_mode == "BFDIfDirectlyConnected"
    model, warnings = parse_snapshot(snapshot({"failureDetectionMode": "Fast"}), last_good=good)
    assert model.bgp_peers["tor"] == good.bgp_peers["tor"]
    assert warnings == [
        "BGPPeer tor: spec.failureDetectionMode 'Fast' is not one of None, BFDIfDirectlyConnected; "
        "keeping its last valid version"
    ]


def test_bfd_is_no_exabgp_config():
    intent = intent_for(snapshot({"failureDetectionMode": "BFDIfDirectlyConnected"}), "node1")
    without = replace(intent, peers=tuple(replace(p, bfd=False) for p in intent.peers))
    assert any(p.bfd for p in intent.peers)
    assert render(intent, api_run="true") == render(without, api_run="true")


def test_apply_knows_the_fields():
    document = {"apiVersion": "projectcalico.org/v3", **peer(failureDetectionMode="BFDIfDirectlyConnected")}
    assert prepare(document, None).warnings == ()
    config = {
        "apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "default"},
        "spec": {"nodeMeshFailureDetectionMode": "BFDIfDirectlyConnected"},
    }  # fmt: skip
    assert prepare(config, None).warnings == ()
