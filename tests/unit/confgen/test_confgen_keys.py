"""Calico's etcd key layout: formatting and parsing, including keys that must be ignored."""

from __future__ import annotations

import pytest

from confgen.datastore import keys

R = keys.RESOURCE_PREFIX


@pytest.mark.parametrize(
    ("kind", "name", "key"),
    [
        ("BGPConfiguration", "default", R + "bgpconfigurations/default"),
        ("BGPConfiguration", "node.node-1", R + "bgpconfigurations/node.node-1"),
        ("BGPPeer", "rack1-tor", R + "bgppeers/rack1-tor"),
        ("BGPFilter", "only-pods", R + "bgpfilters/only-pods"),
        ("Node", "node-1", R + "nodes/node-1"),
        ("IPPool", "default-ipv4-ippool", R + "ippools/default-ipv4-ippool"),
    ],
    ids=["bgpconfig", "bgpconfig-node", "bgppeer", "bgpfilter", "node", "ippool"],
)
def test_resource_key_round_trip(kind, name, key):
    assert keys.resource_key(kind, name) == key
    assert keys.parse_resource_key(key) == (kind, name)


@pytest.mark.parametrize(
    "key",
    [
        R + "workloadendpoints/ns/wep",
        R + "networkpolicies/default.allow",
        R + "nodes/",
        R + "nodes",
        R + "nodes/a/b",
        "/calico/resources/v3/projectcalico.org",
        "/calico/bgp/v1/host/node-1/ip_addr_v4",
        "/other/resources/v3/projectcalico.org/nodes/node-1",
        "",
    ],
    ids=["wep", "policy", "empty-name", "no-slash", "nested", "prefix-only", "v1", "other-root", "empty"],
)
def test_parse_resource_key_ignores_everything_else(key):
    assert keys.parse_resource_key(key) is None


@pytest.mark.parametrize(
    ("kind", "name"),
    [("FelixConfiguration", "default"), ("Node", ""), ("Node", "a/b")],
    ids=["unknown-kind", "empty-name", "slash-in-name"],
)
def test_resource_key_refuses(kind, name):
    with pytest.raises(ValueError):
        keys.resource_key(kind, name)


def test_affinity_prefix():
    assert keys.affinity_prefix("node-1") == "/calico/ipam/v2/host/node-1/ipv4/block/"
    assert keys.affinity_prefix("node-1", "ipv6") == "/calico/ipam/v2/host/node-1/ipv6/block/"
    with pytest.raises(ValueError):
        keys.affinity_prefix("node-1", "ipx")
    with pytest.raises(ValueError):
        keys.affinity_prefix("a/b")


@pytest.mark.parametrize(
    ("node", "cidr", "key"),
    [
        ("node-1", "10.65.1.0/26", "/calico/ipam/v2/host/node-1/ipv4/block/10.65.1.0-26"),
        ("node-1", "10.65.1.7/32", "/calico/ipam/v2/host/node-1/ipv4/block/10.65.1.7-32"),
        ("node-2", "fd00:10:65::/122", "/calico/ipam/v2/host/node-2/ipv6/block/fd00:10:65::-122"),
    ],
    ids=["v4", "v4-32", "v6"],
)
def test_affinity_key_round_trip(node, cidr, key):
    assert keys.affinity_key(node, cidr) == key
    assert keys.parse_affinity_key(key) == (node, cidr)


@pytest.mark.parametrize(
    "key",
    [
        "/calico/ipam/v2/host/node-1/ipv4/block/10.65.1.0",  # no length
        "/calico/ipam/v2/host/node-1/ipv4/block/10.65.1.1-26",  # host bits set
        "/calico/ipam/v2/host/node-1/ipv4/block/fd00::-122",  # family mismatch
        "/calico/ipam/v2/host/node-1/ipv6/block/10.65.1.0-26",  # family mismatch
        "/calico/ipam/v2/host/node-1/ipv4/block/10.65.1.0-x",
        "/calico/ipam/v2/host/node-1/ipv4/block/garbage-26",
        "/calico/ipam/v2/host/node-1/ipv4/handle/10.65.1.0-26",
        "/calico/ipam/v2/host//ipv4/block/10.65.1.0-26",
        "/calico/ipam/v2/virtual/node-1/ipv4/block/10.65.1.0-26",
        "/calico/ipam/v2/assignment/ipv4/block/10.65.1.0-26",
    ],
    ids=[
        "no-len",
        "host-bits",
        "v6-in-v4",
        "v4-in-v6",
        "bad-len",
        "bad-ip",
        "not-block",
        "no-node",
        "virtual",
        "assignment",
    ],
)
def test_parse_affinity_key_rejects(key):
    assert keys.parse_affinity_key(key) is None


def test_affinity_key_refuses_non_networks():
    with pytest.raises(ValueError):
        keys.affinity_key("node-1", "10.65.1.1/26")
