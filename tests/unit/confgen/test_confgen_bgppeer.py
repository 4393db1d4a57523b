"""BGPPeer parsing: every field's canonical form and every refusal's exact message."""

from __future__ import annotations

import pytest

from confgen.bgppeer import BGPPeer, parse_bgp_peer, parse_peer_ip
from confgen.selector import parse
from confgen.validate import SecretRef, ValidationError


def peer(**spec):
    return {"kind": "BGPPeer", "metadata": {"name": "p"}, "spec": spec}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1", 0)),
        ("10.0.0.1:1790", ("10.0.0.1", 1790)),
        ("[fd00::1]:1790", ("fd00::1", 1790)),
        ("[FD00:0::1]:179", ("fd00::1", 179)),
        ("fd00::1", ("fd00::1", 0)),
        ("fd00::1:179", ("fd00::1:179", 0)),  # an address, never split on its last colon
        ("10.0.0.1:0", None),
        ("10.0.0.1:65536", None),
        ("[10.0.0.1]:179", None),
        ("10.0.0.300", None),
        ("10.0.0.1:", None),
        ("[fd00::1]", None),
        ("10.0.0.1 ", None),
        ("", None),
        (None, None),
        ('10.0.0.1"; }', None),
    ],
)
def test_parse_peer_ip(value, expected):
    assert parse_peer_ip(value) == expected


def test_a_full_peer():
    parsed = parse_bgp_peer(
        "rack1-tor",
        peer(
            nodeSelector="rack == 'r1'",
            peerIP="10.0.1.1:1790",
            asNumber="65001",
            localASNumber="1.10",
            sourceAddress="None",
            password={"secretKeyRef": {"name": "bgp-secrets", "key": "tor"}},
            maxRestartTime="5m",
            keepaliveTime="10s",
            ttlSecurity=1,
            nextHopMode="Self",
            keepOriginalNextHop=True,
            numAllowedLocalASNumbers=2,
            filters=["only-pods", "tag", "only-pods"],
            reversePeering="Manual",
            reachableBy="10.0.1.254",
        ),
    )
    assert parsed == BGPPeer(
        name="rack1-tor",
        node_selector=parse("rack == 'r1'"),
        peer_ip="10.0.1.1",
        peer_port=1790,
        as_number=65001,
        local_as_number=65546,
        source_address="None",
        password=SecretRef("bgp-secrets", "tor"),
        max_restart_time=300,
        keepalive_time=10,
        ttl_security=1,
        next_hop_mode="Self",
        keep_original_next_hop=True,
        num_allowed_local_as_numbers=2,
        filters=("only-pods", "tag"),
        reverse_peering="Manual",
        reachable_by="10.0.1.254",
    )
    assert not parsed.is_global and parsed.peer_family == "ipv4"


@pytest.mark.parametrize(
    ("spec", "checks"),
    [
        ({"peerIP": "10.0.0.1", "asNumber": 65000}, {"is_global": True, "source_address": "UseNodeIP"}),
        ({"node": "node-1", "peerSelector": "all()"}, {"node": "node-1", "as_number": None}),
        (
            {"peerIP": "fd00::1", "asNumber": 65000, "nodeSelector": ""},
            {"is_global": True, "peer_family": "ipv6"},
        ),
        ({"peerSelector": "has(rr)", "reversePeering": None}, {"reverse_peering": "Auto", "ttl_security": 0}),
    ],
    ids=["global", "node-and-selector", "empty-selector-is-unset", "defaults"],
)
def test_defaults_and_scopes(spec, checks):
    parsed = parse_bgp_peer("p", peer(**spec))
    for attribute, expected in checks.items():
        assert getattr(parsed, attribute) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"peerIP": "10.0.0.300", "asNumber": 65000},
            "spec.peerIP '10.0.0.300' is not an IP address (or ip:port, [ipv6]:port)",
        ),
        ({}, "spec needs spec.peerIP or spec.peerSelector"),
        ({"peerIP": "10.0.0.1"}, "spec.asNumber is required with spec.peerIP"),
        (
            {"peerIP": "10.0.0.1", "peerSelector": "all()", "asNumber": 1},
            "spec.peerIP must be empty when spec.peerSelector is set",
        ),
        (
            {"peerSelector": "all()", "asNumber": 65000},
            "spec.asNumber must be empty when spec.peerSelector is set (each node's AS is used)",
        ),
        (
            {"node": "n1", "nodeSelector": "all()", "peerSelector": "all()"},
            "spec.node must be empty when spec.nodeSelector is set",
        ),
        ({"node": "Node_1", "peerSelector": "all()"}, "spec.node 'Node_1' is not a valid Node name"),
        (
            {"nodeSelector": "rack ==", "peerSelector": "all()"},
            "spec.nodeSelector is not a valid selector: "
            "expected a quoted string, found the end at character 7 of 'rack =='",
        ),
        (
            {"peerSelector": "all()", "sourceAddress": "Auto"},
            "spec.sourceAddress 'Auto' is not one of UseNodeIP, None",
        ),
        (
            {"peerSelector": "all()", "nextHopMode": "self"},
            "spec.nextHopMode 'self' is not one of Auto, Self, Keep",
        ),
        (
            {"peerSelector": "all()", "reversePeering": "Off"},
            "spec.reversePeering 'Off' is not one of Auto, Manual",
        ),
        ({"peerSelector": "all()", "ttlSecurity": 256}, "spec.ttlSecurity 256 is out of range 0-255"),
        ({"peerSelector": "all()", "maxRestartTime": "2h"}, "spec.maxRestartTime '2h' is longer than 4095s"),
        (
            {"peerSelector": "all()", "maxRestartTime": 120},
            "spec.maxRestartTime 120 is not a duration (like '90s' or '2m')",
        ),
        ({"peerSelector": "all()", "keepaliveTime": "0s"}, "spec.keepaliveTime must be at least 1s"),
        ({"peerSelector": "all()", "keepaliveTime": "7h"}, "spec.keepaliveTime '7h' is longer than 21845s"),
        ({"peerSelector": "all()", "filters": "f"}, "spec.filters 'f' is not a list"),
        (
            {"peerSelector": "all()", "filters": ["ok", "Bad!"]},
            "spec.filters[1] 'Bad!' is not a valid BGPFilter name",
        ),
        ({"peerSelector": "all()", "password": "s3cret"}, "spec.password 's3cret' is not an object"),
        (
            {"peerSelector": "all()", "password": {"value": "x"}},
            "spec.password.secretKeyRef is required (only secretKeyRef passwords are supported)",
        ),
        (
            {"peerSelector": "all()", "password": {"secretKeyRef": {"name": "../etc", "key": "k"}}},
            "spec.password.secretKeyRef.name '../etc' is not a valid secret name",
        ),
        (
            {"peerSelector": "all()", "password": {"secretKeyRef": {"name": "s", "key": ".."}}},
            "spec.password.secretKeyRef.key '..' is not a valid secret key",
        ),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "reachableBy": "fd00::1"},
            "spec.reachableBy fd00::1 is not in the address family of spec.peerIP",
        ),
        ({"peerSelector": "all()", "reachableBy": "10.0.0.1"}, "spec.reachableBy needs spec.peerIP"),
        (
            {"peerSelector": "all()", "localWorkloadSelector": "app == 'x'"},
            "spec.localWorkloadSelector is not supported (it needs Felix's endpoint status files)",
        ),
        (
            {"peerSelector": "all()", "numAllowedLocalASNumbers": -1},
            "spec.numAllowedLocalASNumbers -1 is out of range 0-255",
        ),
    ],
)
def test_refusals_name_the_field_and_the_problem(spec, message):
    with pytest.raises(ValidationError) as info:
        parse_bgp_peer("rack1-tor", peer(**spec))
    assert str(info.value) == f"BGPPeer rack1-tor: {message}"
