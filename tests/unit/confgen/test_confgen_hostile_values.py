"""Hostile *values* at every address field, deep and huge documents, pathological selectors, many peers.

The companion of ``test_confgen_hostile.py`` (which covers names and free text): each case writes one
resource or key carrying the value into a valid dual-stack cluster, runs the daemon's path (Calico keys ->
snapshot -> model -> intent -> render) and checks that exactly that resource is refused with one
printable warning naming it and the field, while the config is byte-identical to the cluster's without it.
"""

from __future__ import annotations

import json

import pytest

from confgen.calc import MAX_WARNINGS, intent_for
from confgen.datastore import keys
from confgen.datastore.memory import MemoryDatastore
from confgen.intent import intent_document
from confgen.model import parse_snapshot
from confgen.render import render

# The shape of the line the daemon renders (bgp.daemon.api_run_line), with the node image's paths.
API_RUN = (
    "/usr/bin/python3 -I -S /opt/calico-bgp/lib/python3.11/site-packages/bgp/exabgp/bridge.py"
    " /var/run/calico-bgp/api.sock"
)

# Values no address field may accept. Each is refused wherever it appears; none may reach the config.
BAD_ADDRESSES = {
    "scope-id-injection": "fd00:96::%x\nshutdown\n/112",
    "scope-id-iface": "fe80::1%eth0",
    "scope-id-v6-global": "fd00::1%1",
    "scope-id-empty": "fd00::1%",
    "scope-id-v4": "10.0.0.1%eth0",
    "mapped-v4": "::ffff:10.0.0.1",
    "mapped-v4-hex": "::ffff:a00:1",
    "leading-space": " 10.0.0.1",
    "trailing-space": "10.0.0.1 ",
    "trailing-newline": "10.0.0.1\n",
    "tab": "\t10.0.0.1",
    "nul": "10.0.0.1\x00",
    "crlf-injection": "10.0.0.1\r\nneighbor 6.6.6.6",
    "leading-zero": "010.0.0.1",
    "octet-256": "10.0.0.256",
    "arabic-digit": "10.0.0.\u0661",
    "zero-width": "fd00::\u200b1",
    "fullwidth": "10.0.0.\uff19",
    "overlong": "1" * 1000,
    "overlong-v6": "fd00:" + "1:" * 60 + ":1",
    "empty-brackets": "[]",
    "number-word": "ten.zero.zero.one",
}
BAD_NETWORKS = {
    **BAD_ADDRESSES,
    "scope-id-in-prefix": "fd00:96::%eth0/112",
    "prefix-33": "10.0.0.0/33",
    "prefix-129": "fd00::/129",
    "prefix-negative": "10.0.0.0/-1",
    "prefix-plus": "10.0.0.0/+8",
    "prefix-hex": "10.0.0.0/0x8",
    "prefix-newline": "10.0.0.0/8\n",
    "netmask-form": "10.0.0.0/255.0.0.0 x",
    "two-prefixes": "10.0.0.0/8/8",
    "mapped-network": "::ffff:10.0.0.0/104",
}


def node_resource(name: str, v4: str, v6: str, **extra) -> dict:
    bgp = {"ipv4Address": v4, "ipv6Address": v6, **extra}
    return {"kind": "Node", "metadata": {"name": name}, "spec": {"bgp": bgp}}


def base_store() -> MemoryDatastore:
    store = MemoryDatastore("node1")
    store.put_resource(node_resource("node1", "10.0.0.11/24", "fd00::11/64"))
    store.put_resource(node_resource("node2", "10.0.0.12/24", "fd00::12/64"))
    for name, cidr in (("v4", "10.65.0.0/16"), ("v6", "fd00:65::/48")):
        store.put_resource({"kind": "IPPool", "metadata": {"name": name}, "spec": {"cidr": cidr}})
    store.put_resource(
        {"kind": "BGPPeer", "metadata": {"name": "tor"}, "spec": {"peerIP": "10.0.0.254", "asNumber": 65000}}
    )
    store.put_affinity("node1", "10.65.1.0/26")
    store.put_affinity("node1", "fd00:65:0:1::/122")
    return store


def rendered(store: MemoryDatastore) -> tuple[str, tuple[str, ...]]:
    intent = intent_for(store.snapshot(), "node1")
    return render(intent, api_run=API_RUN), intent.warnings


BASELINE, BASE_WARNINGS = rendered(base_store())
assert BASE_WARNINGS == () and "neighbor fd00::12 " in BASELINE and "neighbor 10.0.0.254 " in BASELINE


def config(spec: dict) -> dict:
    return {"kind": "BGPConfiguration", "metadata": {"name": "default"}, "spec": spec}


def evil_peer(**spec) -> dict:
    return {"kind": "BGPPeer", "metadata": {"name": "evil"}, "spec": spec}


def evil_filter(rule: dict, field: str = "exportV4") -> dict:
    return {"kind": "BGPFilter", "metadata": {"name": "evil"}, "spec": {field: [rule]}}


# (what, field in the warning, resource carrying the value, kind name) for every address-shaped field.
ADDRESS_FIELDS = {
    "peerIP": ("spec.peerIP", lambda v: evil_peer(peerIP=v, asNumber=65000), "BGPPeer evil"),
    "reachableBy": (
        "spec.reachableBy",
        lambda v: evil_peer(peerIP="10.0.0.253", asNumber=65000, reachableBy=v),
        "BGPPeer evil",
    ),
    "node-v4": ("spec.bgp.ipv4Address", lambda v: node_resource("evil", v, ""), "Node evil"),
    "node-v6": ("spec.bgp.ipv6Address", lambda v: node_resource("evil", "", v), "Node evil"),
    "cluster-id": (
        "spec.bgp.routeReflectorClusterID",
        lambda v: node_resource("evil", "10.0.0.99/24", "", routeReflectorClusterID=v),
        "Node evil",
    ),
}
NETWORK_FIELDS = {
    "serviceClusterIPs": (
        "spec.serviceClusterIPs[0].cidr",
        lambda v: config({"serviceClusterIPs": [{"cidr": v}]}),
        "BGPConfiguration default",
    ),
    "serviceExternalIPs": (
        "spec.serviceExternalIPs[0].cidr",
        lambda v: config({"serviceExternalIPs": [{"cidr": v}]}),
        "BGPConfiguration default",
    ),
    "serviceLoadBalancerIPs": (
        "spec.serviceLoadBalancerIPs[0].cidr",
        lambda v: config({"serviceLoadBalancerIPs": [{"cidr": v}]}),
        "BGPConfiguration default",
    ),
    "prefixAdvertisements": (
        "spec.prefixAdvertisements[0].cidr",
        lambda v: config({"prefixAdvertisements": [{"cidr": v, "communities": ["65000:1"]}]}),
        "BGPConfiguration default",
    ),
    "ippool": (
        "spec.cidr",
        lambda v: {"kind": "IPPool", "metadata": {"name": "evil"}, "spec": {"cidr": v}},
        "IPPool evil",
    ),
    "filter-v4": (
        "spec.exportV4[0].cidr",
        lambda v: evil_filter({"action": "Reject", "cidr": v, "matchOperator": "In"}),
        "BGPFilter evil",
    ),
    "filter-v6": (
        "spec.importV6[0].cidr",
        lambda v: evil_filter({"action": "Reject", "cidr": v, "matchOperator": "In"}, "importV6"),
        "BGPFilter evil",
    ),
}


def assert_refused_alone(store: MemoryDatastore, starts: str) -> str:
    text, warnings = rendered(store)
    assert text == BASELINE
    assert len(warnings) == 1, warnings
    warning = warnings[0]
    assert warning.startswith(starts), warning
    assert warning.isprintable() and len(warning) < 400
    return warning


@pytest.mark.parametrize("value", BAD_ADDRESSES.values(), ids=BAD_ADDRESSES.keys())
@pytest.mark.parametrize("field", ADDRESS_FIELDS, ids=ADDRESS_FIELDS.keys())
def test_bad_addresses_cost_only_their_resource(field, value):
    path, build, who = ADDRESS_FIELDS[field]
    store = base_store()
    store.put_resource(build(value))
    assert_refused_alone(store, f"{who}: {path} ")


@pytest.mark.parametrize("value", BAD_NETWORKS.values(), ids=BAD_NETWORKS.keys())
@pytest.mark.parametrize("field", NETWORK_FIELDS, ids=NETWORK_FIELDS.keys())
def test_bad_networks_cost_only_their_resource(field, value):
    path, build, who = NETWORK_FIELDS[field]
    store = base_store()
    store.put_resource(build(value))
    assert_refused_alone(store, f"{who}: {path} ")


@pytest.mark.parametrize(
    "field", ["serviceClusterIPs", "prefixAdvertisements", "ippool", "filter-v6"], ids=str
)
def test_the_warning_says_scope_ids_are_the_problem(field):
    path, build, who = NETWORK_FIELDS[field]
    store = base_store()
    store.put_resource(build("fd00:96::%x\nshutdown\n/112"))
    warning = assert_refused_alone(store, f"{who}: {path} ")
    assert "scope id" in warning and "\n" not in warning


def test_the_warning_says_how_to_write_a_mapped_address():
    store = base_store()
    store.put_resource(evil_peer(peerIP="::ffff:10.0.0.9", asNumber=65000))
    warning = assert_refused_alone(store, "BGPPeer evil: spec.peerIP ")
    assert "IPv4-mapped" in warning and "10.0.0.9" in warning


@pytest.mark.parametrize(
    "peer_ip, rendered_as",
    [("FD00:0:0::99", "fd00::99"), ("[FD00::99]:179", "fd00::99"), ("fd00:0000::0099", "fd00::99")],
)
def test_unambiguous_spellings_are_accepted_in_canonical_form(peer_ip, rendered_as):
    store = base_store()
    store.put_resource(evil_peer(peerIP=peer_ip, asNumber=65000))
    text, warnings = rendered(store)
    assert warnings == ()
    assert f"neighbor {rendered_as} {{" in text and peer_ip not in text


@pytest.mark.parametrize(
    "dashed",
    [
        "fd00:65:0:2::%x\nshutdown-122",  # the scope id trick in a block key
        "fd00:65:0:2::%eth0-122",
        "fd00:65:0:2::1-122",  # host bits: no block has them
        "::ffff:10.65.2.0-122",
        "fd00:65:0:2:: -122",
    ],
)
def test_bad_block_affinity_keys_are_reported_and_skipped(dashed):
    store = base_store()
    store.put(f"/calico/ipam/v2/host/node1/ipv6/block/{dashed}", "")
    snapshot = store.snapshot()
    assert set(snapshot.affinities) == {"10.65.1.0/26", "fd00:65:0:1::/122"}
    text, warnings = rendered(store)
    assert text == BASELINE
    assert len(warnings) == 1 and "not a block affinity key" in warnings[0]
    assert warnings[0].isprintable()


DEEP = {
    "array": lambda n: '{"spec": ' + "[" * n + "]" * n + "}",
    "object": lambda n: '{"spec": ' + '{"a": ' * n + "1" + "}" * n + "}",
}


@pytest.mark.parametrize("depth", [40, 2_000, 30_000], ids=lambda d: f"depth{d}")
@pytest.mark.parametrize("shape", DEEP, ids=str)
@pytest.mark.parametrize("kind", ["BGPConfiguration", "BGPPeer", "Node", "IPPool", "BGPFilter"])
def test_deep_nesting_costs_only_its_key(kind, shape, depth):
    name = "default" if kind == "BGPConfiguration" else "evil"
    store = base_store()
    key = keys.resource_key(kind, name)
    store.put(key, DEEP[shape](depth))
    assert_refused_alone(store, f"{key}: value nests deeper than ")
    model, _ = parse_snapshot(store.snapshot())
    assert model.invalid[kind] == (name,)


def test_a_deep_affinity_body_costs_only_that_block():
    store = base_store()
    key = keys.affinity_key("node1", "10.65.9.0/26")
    store.put(key, DEEP["array"](100_000))
    text, warnings = rendered(store)
    assert text == BASELINE
    assert warnings == (f"{key}: value nests deeper than 32 levels",)


@pytest.mark.parametrize("size", [300_000, 1_048_576, 8_388_608], ids=["300k", "1M", "8M"])
def test_huge_values_are_refused_by_size(size):
    store = base_store()
    key = keys.resource_key("Node", "evil")
    store.put(key, '{"spec": {"bgp": {}}, "x": "' + "a" * size + '"}')
    assert_refused_alone(store, f"{key}: value is ")


@pytest.mark.parametrize(
    "selector",
    ["!" * 4000 + "all()", "(" * 2000 + "all()" + ")" * 2000, "!(" * 1000 + "has(a)" + ")" * 1000],
    ids=["4000-not", "2000-parens", "mixed"],
)
@pytest.mark.parametrize("field", ["nodeSelector", "peerSelector"])
def test_pathological_selectors_cost_only_their_peer(field, selector):
    if field == "peerSelector":
        spec = {"peerSelector": selector}
    else:
        spec = {"nodeSelector": selector, "peerIP": "10.0.0.9", "asNumber": 65000}
    store = base_store()
    store.put_resource(evil_peer(**spec))
    warning = assert_refused_alone(store, f"BGPPeer evil: spec.{field} is not a valid selector: ")
    assert "nested deeper than 64 levels" in warning


def test_a_pathological_pool_selector_costs_only_its_pool():
    store = base_store()
    resource = {"kind": "IPPool", "metadata": {"name": "evil"}}
    resource["spec"] = {"cidr": "10.66.0.0/16", "nodeSelector": "!" * 4000 + "all()"}
    store.put_resource(resource)
    assert_refused_alone(store, "IPPool evil: spec.nodeSelector is not a valid selector: ")


@pytest.mark.parametrize(
    "raw",
    [
        '{"spec": []}',
        '{"spec": "x"}',
        '{"spec": {"peerIP": ["10.0.0.9"], "asNumber": 65000}}',
        '{"spec": {"peerIP": {"ip": "10.0.0.9"}, "asNumber": 65000}}',
        '{"spec": {"peerIP": 167772169, "asNumber": 65000}}',
        '{"spec": {"peerIP": "10.0.0.9", "asNumber": 1e400}}',
        '{"spec": {"peerIP": "10.0.0.9", "asNumber": NaN}}',
        '{"spec": {"peerIP": "10.0.0.9", "asNumber": "' + "9" * 5000 + '"}}',
        '{"spec": {"peerIP": "10.0.0.9", "asNumber": ' + "9" * 5000 + "}}",
        '{"spec": {"peerIP": "10.0.0.9", "asNumber": 65000, "filters": [[]]}}',
        '{"spec": {"peerIP": "10.0.0.9", "asNumber": 65000, "password": []}}',
        '{"spec": {"peerIP": "10.0.0.9", "asNumber": 65000, "keepaliveTime": {}}}',
        '{"metadata": [], "spec": {}}',
        '{"spec": {"nodeSelector": 7, "asNumber": 65000, "peerIP": "10.0.0.9"}}',
        '"\\ud800"',
        "\xff\xfe",
    ],
)
def test_wrong_json_types_cost_only_their_resource(raw):
    store = base_store()
    key = keys.resource_key("BGPPeer", "evil")
    store.put(key, raw.encode("utf-8", "surrogateescape") if raw != "\xff\xfe" else b"\xff\xfe")
    text, warnings = rendered(store)
    assert text == BASELINE
    assert len(warnings) == 1
    assert warnings[0].startswith(("BGPPeer evil: ", key)) and warnings[0].isprintable()


def test_ten_thousand_invalid_peers_are_counted_but_the_warnings_are_bounded():
    store = base_store()
    for i in range(10_000):
        store.put_resource(
            {"kind": "BGPPeer", "metadata": {"name": f"evil-{i}"}, "spec": {"peerIP": f"fd00::{i:x}%x"}}
        )
    text, warnings = rendered(store)
    assert text == BASELINE
    assert len(warnings) == MAX_WARNINGS
    assert warnings[-1] == f"... and {10_000 - MAX_WARNINGS + 1} more problems (the first 99 are shown)"
    model, _ = parse_snapshot(store.snapshot())
    assert len(model.invalid["BGPPeer"]) == 10_000


def test_ten_thousand_peers_for_other_nodes_leave_this_node_alone():
    store = base_store()
    for i in range(10_000):
        store.put_resource(
            evil_peer(node="node2", peerIP=f"172.16.{i // 256}.{i % 256}", asNumber=65000)
            | {"metadata": {"name": f"other-{i}"}}
        )
    text, warnings = rendered(store)
    assert text == BASELINE and warnings == ()


def test_ten_thousand_global_peers_render_and_each_is_checked():
    store = base_store()
    for i in range(10_000):
        peer_ip = f"172.16.{i // 256}.{i % 256}" if i % 2 else f"fd00:99::{i:x}%eth0"
        store.put_resource(evil_peer(peerIP=peer_ip, asNumber=65000) | {"metadata": {"name": f"g-{i}"}})
    text, warnings = rendered(store)
    assert text.count("\nneighbor 172.16.") == 5_000
    assert "%" not in text and "fd00:99::" not in text
    model, _ = parse_snapshot(store.snapshot())
    assert len(model.invalid["BGPPeer"]) == 5_000
    assert len(warnings) == MAX_WARNINGS


def test_the_issue_example_never_reaches_the_config_or_the_intent():
    """The reported attack: a service range carrying a scope id with newlines and a command."""
    store = base_store()
    store.put_resource(config({"serviceClusterIPs": [{"cidr": "fd00:96::%x\nshutdown\n/112"}]}))
    intent = intent_for(store.snapshot(), "node1")
    assert intent.service_cluster_ips == ()
    document = intent_document(intent)
    assert [w for w in document.pop("warnings") if "\n" in w] == []  # the value is quoted, on one line
    assert "shutdown" not in json.dumps(document)
    assert render(intent, api_run=API_RUN) == BASELINE
