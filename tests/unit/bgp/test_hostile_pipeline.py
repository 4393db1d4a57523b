"""Fuzzing the whole pipeline with hostile datastore values: keys -> snapshot -> model -> intent -> the three
sinks (ExaBGP config, ExaBGP API lines, nftables script).

Property, for every resource kind: take a valid cluster and a valid resource of that kind, replace one field
anywhere in it (or the whole body) with arbitrary JSON or hostile text, write it under its Calico key and
run the daemon's path with the previous snapshot's model as the last good one (as ``confgen.loop`` does).
Then:
- no exception escapes any stage;
- every line the sinks emit is in their grammar (no control character, no scope id, one command per line);
- if the resource was refused, every sink's output is byte-identical to the cluster's before the write.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgp.gtsm import ruleset
from bgp.speaker import Speaker
from confgen.calc import intent_from_model
from confgen.datastore import keys
from confgen.datastore.memory import MemoryDatastore
from confgen.model import parse_snapshot
from confgen.render import render
from routes.testing import FakeRouteTable

# The shape of the line the daemon renders (bgp.daemon.api_run_line), with the node image's paths.
API_RUN = (
    "/usr/bin/python3 -I -S /opt/calico-bgp/lib/python3.11/site-packages/bgp/exabgp/bridge.py"
    " /var/run/calico-bgp/api.sock"
)

# -- the grammar every emitted API line must be in (independent of bgp.exabgp.commands' own check) ------
_V4 = r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_V6 = r"[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){1,7}(?::" + _V4 + r")?"
_IP = rf"(?:{_V4}|{_V6})"
_PREFIX = rf"(?:{_V4}/(?:3[0-2]|[12]?[0-9])|{_V6}/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))"
_N = r"[0-9]{1,10}"
_ATTRIBUTES = (
    rf"next-hop {_IP}(?: origin (?:igp|egp|incomplete))?"
    rf"(?: as-path \[(?: {_N})+ \])?(?: local-preference {_N})?(?: med {_N})?"
    rf"(?: community \[(?: {_N}:{_N})+ \])?(?: large-community \[(?: {_N}:{_N}:{_N})+ \])?"
    rf"(?: originator-id {_V4})?(?: cluster-list \[(?: {_V4})+ \])?"
)
API_LINE = re.compile(
    rf"neighbor {_IP} (?:(?:announce|withdraw) attributes {_ATTRIBUTES} nlri(?: {_PREFIX})+"
    rf"|announce eor ipv[46] unicast|teardown [0-9]{{1,3}})"
)
# nft: the shapes of line bgp.gtsm writes, and nothing else (a value can open no statement or comment).
_TABLE = r"[a-z_]+"
NFT_LINE = re.compile(
    "|".join(
        [
            rf"(?:add|delete) table inet {_TABLE}",
            rf"table inet {_TABLE} {{",
            r"    chain (?:input|output) {",
            r"        type filter hook (?:input|output) priority -?[0-9]+; policy accept;",
            rf"        ip saddr {_V4} tcp [ds]port [0-9]+ ip ttl < [0-9]+ drop",
            rf"        ip6 saddr {_V6} tcp [ds]port [0-9]+ ip6 hoplimit < [0-9]+ drop",
            rf"        ip daddr {_V4} tcp [ds]port [0-9]+ ip ttl set 255",
            rf"        ip6 daddr {_V6} tcp [ds]port [0-9]+ ip6 hoplimit set 255",
            r"    }",
            r"}",
        ]
    )
)


def node(name: str, v4: str, v6: str, labels: dict | None = None) -> dict:
    return {
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {"rack": "r1"}},
        "spec": {"bgp": {"ipv4Address": v4, "ipv6Address": v6}},
    }


BASE_RESOURCES = [
    node("node1", "10.0.0.11/24", "fd00::11/64"),
    node("node2", "10.0.0.12/24", "fd00::12/64"),
    {"kind": "IPPool", "metadata": {"name": "v4"}, "spec": {"cidr": "10.65.0.0/16", "ipipMode": "Always"}},
    {"kind": "IPPool", "metadata": {"name": "v6"}, "spec": {"cidr": "fd00:65::/48"}},
    {
        "kind": "BGPConfiguration",
        "metadata": {"name": "default"},
        "spec": {
            "asNumber": 64512,
            "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}, {"cidr": "fd00:96::/112"}],
            "communities": [{"name": "gold", "value": "65000:100"}],
            "prefixAdvertisements": [{"cidr": "10.65.1.0/26", "communities": ["gold", "65000:7:7"]}],
        },
    },
    {
        "kind": "BGPPeer",
        "metadata": {"name": "tor"},
        "spec": {"peerIP": "10.0.0.254", "asNumber": 65000, "ttlSecurity": 1, "filters": ["tor"]},
    },
    {
        "kind": "BGPFilter",
        "metadata": {"name": "tor"},
        "spec": {"exportV4": [{"action": "Accept", "cidr": "10.65.0.0/16", "matchOperator": "In"}]},
    },
]

# One valid resource per kind, with many fields set, for the fuzzer to break one field at a time. Names
# and addresses are chosen so that, when valid, each only adds to the cluster.
TEMPLATES = {
    "BGPPeer": {
        "kind": "BGPPeer",
        "metadata": {"name": "fuzz"},
        "spec": {
            "peerIP": "[fd00::77]:1790",
            "asNumber": "65001",
            "keepaliveTime": "30s",
            "maxRestartTime": "2m",
            "ttlSecurity": 3,
            "nextHopMode": "Self",
            "filters": ["tor"],
            "sourceAddress": "UseNodeIP",
            "nodeSelector": "rack == 'r1' && !has(edge)",
        },
    },
    "Node": {
        "kind": "Node",
        "metadata": {"name": "fuzz", "labels": {"rack": "r2"}},
        "spec": {
            "bgp": {
                "ipv4Address": "10.0.0.77/24",
                "ipv6Address": "fd00::77/64",
                "asNumber": 65010,
                "routeReflectorClusterID": "224.0.0.1",
            }
        },
    },
    "IPPool": {
        "kind": "IPPool",
        "metadata": {"name": "fuzz"},
        "spec": {
            "cidr": "10.70.0.0/16",
            "vxlanMode": "CrossSubnet",
            "blockSize": 26,
            "nodeSelector": "all()",
        },
    },
    "BGPFilter": {
        "kind": "BGPFilter",
        "metadata": {"name": "tor"},  # replaces the filter the ToR peer uses
        "spec": {
            "exportV4": [
                {
                    "action": "Accept",
                    "cidr": "10.65.0.0/16",
                    "matchOperator": "In",
                    "prefixLength": {"min": 26, "max": 32},
                    "operations": [
                        {"prependASPath": {"prefix": [65000]}},
                        {"addCommunity": {"value": "1:2"}},
                    ],
                }
            ],
            "importV6": [{"action": "Reject", "cidr": "fd00:96::/112", "matchOperator": "NotIn"}],
        },
    },
    "BGPConfiguration": copy.deepcopy(BASE_RESOURCES[4]),
}

HOSTILE_TEXT = [
    "fd00:96::%x\nshutdown\n/112",
    "fe80::1%eth0",
    "::ffff:10.0.0.1",
    "10.0.0.1\nneighbor 6.6.6.6 teardown 2",
    "10.0.0.1; }",
    "65000\n",
    "1.2.3.4/24 #",
    "30s\nshutdown",
    "rack == 'r1'\n",
    "!" * 4000 + "all()",
    "(" * 300 + ")" * 300,
    "a" * 5000,
    "\x00",
    "\u2028",
    "fd00::%25eth0",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(HOSTILE_TEXT),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def leaf_paths(value, prefix=()):
    """Every path into ``value`` (containers and leaves), so any one spot can be replaced."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from leaf_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from leaf_paths(child, (*prefix, index))


def replaced(value, path, new):
    if not path:
        return new
    value = copy.deepcopy(value)
    target = value
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return value


# Address-shaped text with something appended: the shape that slips past a lenient address parser.
address_like = st.builds(
    lambda address, sep, tail: f"{address}{sep}{tail}",
    st.sampled_from(["fd00::1", "10.0.0.9", "fd00:96::", "fe80::1", "10.96.0.0"]),
    st.sampled_from(["%", "%x\n", "\n", " ", "/24\n", "/112%", "%25"]),
    st.text(max_size=12),
)
# Half the replacements are hostile text, so every field meets the known attacks within a few examples.
replacements = st.one_of(st.sampled_from(HOSTILE_TEXT), address_like, json_values)


@st.composite
def mutations(draw, kind: str):
    template = TEMPLATES[kind]
    paths = [p for p in leaf_paths(template) if p[:1] != ("kind",) and p != ("metadata", "name")]
    path = draw(st.sampled_from(paths))
    return replaced(template, path, draw(replacements))



def api_lines(intent) -> list[str]:
    """Every API line the speaker sends for ``intent`` once all its peers are up."""
    sent: list[str] = []

    async def send(lines):
        sent.extend(lines)

    async def run():
        speaker = Speaker(send=send, route_table=FakeRouteTable())
        speaker.set_intent(intent)
        speaker.set_workload_routes(["10.65.200.5/32", "10.96.0.10/32", "fd00:65:0:9::5/128"])
        for peer in intent.peers:
            local = intent.ipv4_address if peer.family == "ipv4" else intent.ipv6_address
            event = {
                "type": "state",
                "neighbor": {
                    "address": {"local": local, "peer": peer.address},
                    "asn": {"local": peer.local_as, "peer": peer.peer_as},
                    "state": "up",
                },
            }
            speaker.handle_line(json.dumps(event))
        await speaker.flush()

    asyncio.run(run())
    return sent


def pipeline(store: MemoryDatastore, last_good=None):
    model, warnings = parse_snapshot(store.snapshot(), last_good)
    intent = intent_from_model(model, "node1", warnings=warnings)
    rendered = render(intent, api_run=API_RUN)
    text = rendered if isinstance(rendered, str) else rendered.text
    return model, intent, text, api_lines(intent), ruleset(intent)


def base_store() -> MemoryDatastore:
    store = MemoryDatastore("node1")
    for resource in BASE_RESOURCES:
        store.put_resource(resource)
    store.put_affinity("node1", "10.65.1.0/26")
    store.put_affinity("node1", "fd00:65:0:1::/122")
    return store


BASE_MODEL, BASE_INTENT, BASE_TEXT, BASE_API, BASE_NFT = pipeline(base_store())


def test_the_base_cluster_exercises_every_sink():
    assert "neighbor fd00::12 {" in BASE_TEXT and "neighbor 10.0.0.254 {" in BASE_TEXT
    assert any(" nlri 10.65.1.0/26" in line for line in BASE_API)
    assert any(" nlri fd00:65:0:1::/122" in line for line in BASE_API)
    assert "10.0.0.254" in BASE_NFT and BASE_INTENT.warnings == ()
    check_grammar(BASE_TEXT, BASE_API, BASE_NFT)


def check_grammar(text: str, lines: list[str], nft: str) -> None:
    for line in text.splitlines():
        assert line.isascii() and line.isprintable() and "%" not in line, line
    for line in lines:
        assert API_LINE.fullmatch(line), line
    for line in nft.splitlines():
        assert NFT_LINE.fullmatch(line), line


def was_refused(model, kind: str, name: str) -> bool:
    return name in model.invalid.get(kind, ())


FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_one_broken_field_anywhere_costs_only_its_resource(kind):
    @FUZZ
    @given(resource=mutations(kind))
    def check(resource):
        store = base_store()
        name = TEMPLATES[kind]["metadata"]["name"]
        store.put(keys.resource_key(kind, name), json.dumps(resource))
        model, intent, text, lines, nft = pipeline(store, last_good=BASE_MODEL)
        check_grammar(text, lines, nft)
        if was_refused(model, kind, name) and kind in ("BGPConfiguration", "BGPFilter"):
            # Both replace a resource the cluster already had: its last valid version stays in force.
            assert (text, lines, nft) == (BASE_TEXT, BASE_API, BASE_NFT)
        elif was_refused(model, kind, name):
            assert (text, lines, nft) == (BASE_TEXT, BASE_API, BASE_NFT)
            named = (f"{kind} {name}:", keys.resource_key(kind, name) + ":")
            assert any(w.startswith(named) for w in intent.warnings)

    check()


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_arbitrary_bodies_cost_only_their_resource(kind):
    name = TEMPLATES[kind]["metadata"]["name"]

    @FUZZ
    @given(body=st.one_of(json_values, st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
    def check(body):
        store = base_store()
        raw = body if isinstance(body, str) and not body.startswith("{") else json.dumps(body)
        store.put(keys.resource_key(kind, name), raw)
        model, intent, text, lines, nft = pipeline(store, last_good=BASE_MODEL)
        check_grammar(text, lines, nft)
        if was_refused(model, kind, name):
            assert (text, lines, nft) == (BASE_TEXT, BASE_API, BASE_NFT)

    check()


@FUZZ
@given(
    dashed=st.one_of(
        st.text(max_size=60), st.sampled_from(HOSTILE_TEXT), address_like.map(lambda a: a + "-122")
    ),
    family=st.sampled_from(["4", "6"]),
)
def test_arbitrary_affinity_keys_never_reach_a_sink(dashed, family):
    store = base_store()
    store.put(f"/calico/ipam/v2/host/node1/ipv{family}/block/{dashed}", "")
    model, intent, text, lines, nft = pipeline(store, last_good=BASE_MODEL)
    check_grammar(text, lines, nft)
    if set(model.block_affinities) == set(BASE_MODEL.block_affinities):
        assert (text, lines, nft) == (BASE_TEXT, BASE_API, BASE_NFT)
