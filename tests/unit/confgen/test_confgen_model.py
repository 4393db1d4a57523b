"""Resource parsing and validation: defaults, canonical forms, and exact error messages."""

from __future__ import annotations

import pytest

from confgen.datastore.base import Snapshot
from confgen.model import (
    BGPConfiguration,
    BlockAffinity,
    IPPool,
    Node,
    ValidationError,
    parse_as_number,
    parse_bgp_configuration,
    parse_block_affinity,
    parse_ip_pool,
    parse_node,
    parse_snapshot,
)
from confgen.validate import SecretRef


def spec(**fields):
    return {"kind": "x", "metadata": {"name": "x"}, "spec": fields}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (64512, 64512),
        ("64512", 64512),
        ("1.10", 65546),
        ("0.1", 1),
        ("65535.65535", 2**32 - 1),
        (4294967295, 4294967295),
        ("4200000000", 4200000000),
        (0, None),
        (-1, None),
        (4294967296, None),
        ("65536.0", None),
        ("1.65536", None),
        ("1.2.3", None),
        ("", None),
        (" 64512", None),
        ("64512\n", None),
        (64512.0, None),
        (True, None),
        (None, None),
        ([64512], None),
    ],
)
def test_parse_as_number(value, expected):
    assert parse_as_number(value) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, BGPConfiguration("default")),
        ({"spec": {}}, BGPConfiguration("default")),
        (
            spec(asNumber="1.10", nodeToNodeMeshEnabled=False, listenPort=1790, logSeverityScreen="debug"),
            BGPConfiguration("default", 65546, False, 1790, "Debug"),
        ),
        (spec(asNumber=65001, nodeToNodeMeshEnabled=True), BGPConfiguration("default", 65001, True)),
        (spec(asNumber=None, listenPort=None), BGPConfiguration("default")),
    ],
    ids=["empty", "empty-spec", "all-fields", "number", "nulls"],
)
def test_bgp_configuration(raw, expected):
    assert parse_bgp_configuration("default", raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, Node("n1")),
        ({"spec": {"bgp": {}}}, Node("n1")),
        (
            spec(bgp={"ipv4Address": "10.0.0.11/24"}),
            Node("n1", ipv4_address="10.0.0.11", ipv4_network="10.0.0.0/24"),
        ),
        (
            spec(bgp={"ipv4Address": "10.0.0.11"}),
            Node("n1", ipv4_address="10.0.0.11", ipv4_network="10.0.0.11/32"),
        ),
        (
            spec(bgp={"ipv6Address": "FD00:0::11/64", "asNumber": "65001"}),
            Node("n1", ipv6_address="fd00::11", ipv6_network="fd00::/64", as_number=65001),
        ),
        (
            spec(bgp={"ipv4Address": "10.0.0.11/24", "routeReflectorClusterID": "224.0.0.1"}),
            Node("n1", "10.0.0.11", "10.0.0.0/24", route_reflector_cluster_id="224.0.0.1"),
        ),
    ],
    ids=["no-spec", "no-addresses", "v4-cidr", "v4-bare", "v6-normalised", "rr"],
)
def test_node(raw, expected):
    assert parse_node("n1", raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (spec(cidr="192.168.0.0/16"), IPPool("p", "192.168.0.0/16", block_size=26)),
        (spec(cidr="192.168.0.1/16"), IPPool("p", "192.168.0.0/16", block_size=26)),
        (spec(cidr="fd00:10:65::/48"), IPPool("p", "fd00:10:65::/48", block_size=122)),
        (
            spec(
                cidr="10.65.0.0/16",
                ipipMode="CrossSubnet",
                disableBGPExport=True,
                disabled=True,
                blockSize=28,
            ),
            IPPool("p", "10.65.0.0/16", "CrossSubnet", "Never", True, True, 28),
        ),
        (
            spec(cidr="10.65.0.0/16", vxlanMode="Always", ipipMode=""),
            IPPool("p", "10.65.0.0/16", vxlan_mode="Always"),
        ),
        (spec(cidr="10.65.0.0/26", blockSize=26), IPPool("p", "10.65.0.0/26", block_size=26)),
    ],
    ids=["plain", "host-bits-normalised", "v6-default-block", "all-fields", "vxlan", "pool-is-one-block"],
)
def test_ip_pool(raw, expected):
    assert parse_ip_pool("p", raw) == expected


HOSTILE = ['10.0.0.1"; }', "10.0.0.1\nneighbor 6.6.6.6 {", "10.0.0.1;", "{", "'", "\x00", "#", "10.0.0.1 # x"]


@pytest.mark.parametrize(
    ("parser", "name", "raw", "message"),
    [
        (
            parse_ip_pool,
            "pool-a",
            spec(cidr="10.0.0.300/24"),
            "IPPool pool-a: spec.cidr '10.0.0.300/24' is not an IP network",
        ),
        (parse_ip_pool, "pool-a", spec(), "IPPool pool-a: spec.cidr is required"),
        (parse_ip_pool, "pool-a", spec(cidr=42), "IPPool pool-a: spec.cidr 42 is not an IP network"),
        (
            parse_ip_pool,
            "pool-a",
            spec(cidr="10.0.0.0/8", ipipMode="always"),
            "IPPool pool-a: spec.ipipMode 'always' is not one of Never, Always, CrossSubnet",
        ),
        (
            parse_ip_pool,
            "pool-a",
            spec(cidr="fd00::/48", ipipMode="Always"),
            "IPPool pool-a: spec.ipipMode 'Always' is not allowed on an IPv6 pool",
        ),
        (
            parse_ip_pool,
            "pool-a",
            spec(cidr="10.0.0.0/8", ipipMode="Always", vxlanMode="Always"),
            "IPPool pool-a: spec.vxlanMode cannot be enabled together with spec.ipipMode",
        ),
        (
            parse_ip_pool,
            "pool-a",
            spec(cidr="10.0.0.0/8", blockSize=19),
            "IPPool pool-a: spec.blockSize 19 is out of range 20-32",
        ),
        (
            parse_ip_pool,
            "pool-a",
            spec(cidr="10.0.0.0/28", blockSize=26),
            "IPPool pool-a: spec.blockSize 26 is larger than the pool 10.0.0.0/28",
        ),
        (
            parse_ip_pool,
            "pool-a",
            spec(cidr="10.0.0.0/8", blockSize="26"),
            "IPPool pool-a: spec.blockSize '26' is not an integer",
        ),
        (
            parse_ip_pool,
            "pool-a",
            spec(cidr="10.0.0.0/8", disabled="yes"),
            "IPPool pool-a: spec.disabled 'yes' is not a boolean",
        ),
        (parse_ip_pool, "pool-a", {"spec": "cidr"}, "IPPool pool-a: spec 'cidr' is not an object"),
        (parse_ip_pool, "pool-a", ["not", "an", "object"], "IPPool pool-a: is not a JSON object"),
        (
            parse_ip_pool,
            "Pool_A",
            spec(cidr="10.0.0.0/8"),
            "IPPool Pool_A: metadata.name is not a valid resource name (DNS-1123 subdomain)",
        ),
        (
            parse_ip_pool,
            'a"; }',
            spec(cidr="10.0.0.0/8"),
            "IPPool 'a\"; }': metadata.name is not a valid resource name (DNS-1123 subdomain)",
        ),
        (
            parse_node,
            "n1",
            spec(bgp={"ipv4Address": "fd00::1/64"}),
            "Node n1: spec.bgp.ipv4Address 'fd00::1/64' is not an IPv4 address",
        ),
        (
            parse_node,
            "n1",
            spec(bgp={"ipv6Address": "10.0.0.1"}),
            "Node n1: spec.bgp.ipv6Address '10.0.0.1' is not an IPv6 address",
        ),
        (
            parse_node,
            "n1",
            spec(bgp={"ipv4Address": "10.0.0.1/33"}),
            "Node n1: spec.bgp.ipv4Address '10.0.0.1/33' is not an IP address or address/prefix",
        ),
        (
            parse_node,
            "n1",
            spec(bgp={"ipv4Address": "10.0.0.1", "asNumber": "65536.1"}),
            "Node n1: spec.bgp.asNumber '65536.1' is not an AS number (1-4294967295 or asdot X.Y)",
        ),
        (
            parse_node,
            "n1",
            spec(bgp={"routeReflectorClusterID": "rr-1"}),
            "Node n1: spec.bgp.routeReflectorClusterID 'rr-1' is not an IPv4-formatted cluster id",
        ),
        (parse_node, "n1", spec(bgp="10.0.0.1"), "Node n1: spec.bgp '10.0.0.1' is not an object"),
        (
            parse_bgp_configuration,
            "default",
            spec(asNumber="as64512"),
            "BGPConfiguration default: spec.asNumber 'as64512' is not an AS number "
            "(1-4294967295 or asdot X.Y)",
        ),
        (
            parse_bgp_configuration,
            "default",
            spec(nodeToNodeMeshEnabled="false"),
            "BGPConfiguration default: spec.nodeToNodeMeshEnabled 'false' is not a boolean",
        ),
        (
            parse_bgp_configuration,
            "default",
            spec(listenPort=0),
            "BGPConfiguration default: spec.listenPort 0 is out of range 1-65535",
        ),
        (
            parse_bgp_configuration,
            "default",
            spec(listenPort=65536),
            "BGPConfiguration default: spec.listenPort 65536 is out of range 1-65535",
        ),
        (
            parse_bgp_configuration,
            "default",
            spec(logSeverityScreen="Loud"),
            "BGPConfiguration default: spec.logSeverityScreen 'Loud' is not one of "
            "Trace, Debug, Info, Warning, Error, Fatal, None",
        ),
    ],
)
def test_invalid_resources(parser, name, raw, message):
    with pytest.raises(ValidationError) as info:
        parser(name, raw)
    assert str(info.value) == message


@pytest.mark.parametrize("hostile", HOSTILE, ids=[f"hostile-{i}" for i in range(len(HOSTILE))])
@pytest.mark.parametrize(
    ("parser", "name", "build"),
    [
        (parse_node, "victim", lambda v: spec(bgp={"ipv4Address": v})),
        (parse_node, "victim", lambda v: spec(bgp={"ipv6Address": v})),
        (parse_node, "victim", lambda v: spec(bgp={"asNumber": v})),
        (parse_node, "victim", lambda v: spec(bgp={"routeReflectorClusterID": v})),
        (parse_ip_pool, "victim", lambda v: spec(cidr=v)),
        (parse_ip_pool, "victim", lambda v: spec(cidr="10.0.0.0/8", ipipMode=v)),
        (parse_bgp_configuration, "default", lambda v: spec(asNumber=v)),
        (parse_bgp_configuration, "default", lambda v: spec(logSeverityScreen=v)),
    ],
    ids=["ipv4Address", "ipv6Address", "node-as", "rr-id", "cidr", "ipipMode", "global-as", "severity"],
)
def test_hostile_strings_are_rejected_with_a_printable_message(parser, name, build, hostile):
    with pytest.raises(ValidationError) as info:
        parser(name, build(hostile))
    message = str(info.value)
    prefixes = ("Node victim: spec.", "IPPool victim: spec.", "BGPConfiguration default: spec.")
    assert message.startswith(prefixes)
    assert "\n" not in message and "\x00" not in message  # shown with repr(), safe for logs


def test_long_values_are_cut_in_messages():
    with pytest.raises(ValidationError) as info:
        parse_ip_pool("p", spec(cidr="x" * 10_000))
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("raw", "expected", "confirmed"),
    [
        ({}, BlockAffinity("10.65.1.0/26"), True),
        ({"state": "confirmed", "deleted": False}, BlockAffinity("10.65.1.0/26", "confirmed"), True),
        ({"state": "pending"}, BlockAffinity("10.65.1.0/26", "pending"), False),
        ({"state": "pendingDeletion"}, BlockAffinity("10.65.1.0/26", "pendingDeletion"), False),
        ({"state": "confirmed", "deleted": True}, BlockAffinity("10.65.1.0/26", "confirmed", True), False),
    ],
    ids=["legacy-empty", "confirmed", "pending", "pending-deletion", "deleted"],
)
def test_block_affinity(raw, expected, confirmed):
    affinity = parse_block_affinity("10.65.1.0/26", raw)
    assert affinity == expected
    assert affinity.confirmed is confirmed


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"state": "claimed"},
            "BlockAffinity 10.65.1.0/26: state 'claimed' is not one of confirmed, pending, pendingDeletion",
        ),
        ({"deleted": "no"}, "BlockAffinity 10.65.1.0/26: deleted 'no' is not a boolean"),
    ],
    ids=["state", "deleted"],
)
def test_invalid_block_affinity(raw, message):
    with pytest.raises(ValidationError, match="^" + message.replace(".", r"\.") + "$"):
        parse_block_affinity("10.65.1.0/26", raw)


def test_parse_snapshot_skips_invalid_resources_and_reports_them():
    snapshot = Snapshot(
        revision=7,
        resources={
            "BGPConfiguration": {"default": spec(asNumber="bogus"), "node.n1": spec(listenPort=1790)},
            "Node": {"n1": spec(bgp={"ipv4Address": "10.0.0.1/24"}), "n2": spec(bgp={"ipv4Address": "nope"})},
            "IPPool": {"good": spec(cidr="10.65.0.0/16"), "bad": spec(cidr="10.0.0.300/24")},
            "BGPPeer": {"later": spec(peerIP="not parsed yet")},
        },
        affinities={"10.65.1.0/26": {"state": "confirmed"}, "10.65.2.0/26": {"state": "weird"}},
        errors=(
            "/calico/resources/v3/projectcalico.org/nodes/n3: value is not valid JSON (JSONDecodeError)",
        ),
    )
    model, warnings = parse_snapshot(snapshot)
    assert sorted(model.nodes) == ["n1"]
    assert sorted(model.ip_pools) == ["good"]
    assert sorted(model.block_affinities) == ["10.65.1.0/26"]
    assert model.as_number == 64512  # the invalid default config falls back to Calico's defaults
    assert model.mesh_enabled is True
    assert model.listen_port == 179
    assert model.listen_port_of("n1") == 1790
    assert model.listen_port_of("n2") == 179
    assert warnings == [
        "/calico/resources/v3/projectcalico.org/nodes/n3: value is not valid JSON (JSONDecodeError)",
        "BGPConfiguration default: spec.asNumber 'bogus' is not an AS number (1-4294967295 or asdot X.Y)",
        "Node n2: spec.bgp.ipv4Address 'nope' is not an IP address or address/prefix",
        "IPPool bad: spec.cidr '10.0.0.300/24' is not an IP network",
        "BGPPeer later: spec.peerIP 'not parsed yet' is not an IP address (or ip:port, [ipv6]:port)",
        "BlockAffinity 10.65.2.0/26: state 'weird' is not one of confirmed, pending, pendingDeletion",
    ]
    assert model.invalid == {
        "BGPConfiguration": ("default",),
        "Node": ("n2",),
        "IPPool": ("bad",),
        "BGPPeer": ("later",),
        "BGPFilter": (),
    }


def test_global_defaults_and_overrides():
    empty, _ = parse_snapshot(Snapshot(revision=1))
    assert (empty.as_number, empty.mesh_enabled, empty.listen_port) == (64512, True, 179)
    snapshot = Snapshot(
        revision=1,
        resources={
            "BGPConfiguration": {
                "default": spec(asNumber=65000, nodeToNodeMeshEnabled=False, listenPort=1790)
            }
        },
    )
    model, warnings = parse_snapshot(snapshot)
    assert (model.as_number, model.mesh_enabled, model.listen_port) == (65000, False, 1790)
    assert warnings == []


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"rack": "r1", "kubernetes.io/hostname": "node-1", "empty": ""},
         (("empty", ""), ("kubernetes.io/hostname", "node-1"), ("rack", "r1"))),
        ({}, ()),
    ],
)  # fmt: skip
def test_node_labels(labels, expected):
    raw = {"metadata": {"name": "n1", "labels": labels}, "spec": {}}
    node = parse_node("n1", raw)
    assert node.labels == expected
    assert node.label_map == dict(expected)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"bad key": "x"}, "Node n1: metadata.labels key 'bad key' is not a valid label key"),
        ({"rack": "r 1"}, "Node n1: metadata.labels.rack 'r 1' is not a valid label value"),
        ({"rack": 1}, "Node n1: metadata.labels.rack 1 is not a valid label value"),
        ({"-x/y": "1"}, "Node n1: metadata.labels key '-x/y' is not a valid label key"),
        ("rack=r1", "Node n1: metadata.labels 'rack=r1' is not an object"),
    ],
)
def test_invalid_labels(labels, message):
    with pytest.raises(ValidationError) as info:
        parse_node("n1", {"metadata": {"labels": labels}, "spec": {}})
    assert str(info.value) == message


def _snapshot(default_spec, peer_spec=None, broken=()):
    resources = {"BGPConfiguration": {"default": {"spec": default_spec}}, "BGPPeer": {}}
    if peer_spec is not None:
        resources["BGPPeer"]["tor"] = {"spec": peer_spec}
    return Snapshot(revision=1, resources=resources, broken=broken)


def test_an_invalid_resource_keeps_its_last_valid_version():
    good, warnings = parse_snapshot(
        _snapshot({"nodeToNodeMeshEnabled": False, "asNumber": 65000}, {"peerIP": "10.0.0.1", "asNumber": 1})
    )
    assert warnings == [] and not good.mesh_enabled and "tor" in good.bgp_peers

    # A typo in the default configuration must not turn the mesh back on across the cluster.
    edited = _snapshot(
        {"nodeToNodeMeshEnabled": "no", "asNumber": 65000}, {"peerIP": "10.0.0.300", "asNumber": 1}
    )
    model, warnings = parse_snapshot(edited, last_good=good)
    assert not model.mesh_enabled and model.as_number == 65000
    assert model.bgp_peers["tor"] == good.bgp_peers["tor"]
    assert warnings == [
        "BGPConfiguration default: spec.nodeToNodeMeshEnabled 'no' is not a boolean; "
        "keeping its last valid version",
        "BGPPeer tor: spec.peerIP '10.0.0.300' is not an IP address (or ip:port, [ipv6]:port); "
        "keeping its last valid version",
    ]
    assert model.invalid["BGPConfiguration"] == ("default",) and model.invalid["BGPPeer"] == ("tor",)

    # Without a previous version (a fresh start) the invalid resource is skipped.
    fresh, _ = parse_snapshot(edited)
    assert fresh.mesh_enabled and "tor" not in fresh.bgp_peers

    # Deleting the resource really deletes it: there is nothing to keep.
    deleted, warnings = parse_snapshot(_snapshot({"nodeToNodeMeshEnabled": False}), last_good=model)
    assert "tor" not in deleted.bgp_peers and warnings == []


def test_an_undecodable_resource_keeps_its_last_valid_version():
    good, _ = parse_snapshot(_snapshot({}, {"peerIP": "10.0.0.1", "asNumber": 1}))
    broken = Snapshot(
        revision=2,
        resources={"BGPPeer": {}},
        errors=(
            "/calico/resources/v3/projectcalico.org/bgppeers/tor: value is not valid JSON (JSONDecodeError)",
        ),
        broken=(("BGPPeer", "tor"),),
    )
    model, warnings = parse_snapshot(broken, last_good=good)
    assert model.bgp_peers["tor"] == good.bgp_peers["tor"]
    assert warnings[-1] == "BGPPeer tor: keeping its last valid version"
    assert model.invalid["BGPPeer"] == ("tor",)


def test_secret_refs_collects_mesh_and_peer_passwords():
    snapshot = Snapshot(
        revision=1,
        resources={
            "BGPConfiguration": {
                "default": {"spec": {"nodeMeshPassword": {"secretKeyRef": {"name": "m", "key": "k"}}}}
            },
            "BGPPeer": {
                "a": {
                    "spec": {"peerSelector": "all()", "password": {"secretKeyRef": {"name": "s", "key": "a"}}}
                },
                "b": {
                    "spec": {"peerSelector": "all()", "password": {"secretKeyRef": {"name": "s", "key": "a"}}}
                },
                "c": {"spec": {"peerSelector": "all()"}},
            },
        },
    )
    model, _ = parse_snapshot(snapshot)
    assert model.secret_refs() == {SecretRef("m", "k"), SecretRef("s", "a")}
