"""No datastore string reaches the ExaBGP config unvalidated: a hostile corpus through the whole pipeline.

Every case adds one resource carrying a hostile value (quotes, braces, semicolons, newlines, very long
strings, non-ASCII, shell and config injection) to a valid cluster, runs it through the same path as the
daemon (Calico keys in the in-memory datastore -> snapshot -> model -> intent -> render) and checks that
the resource is rejected with a warning naming it, and that the config is byte-identical to the one the
cluster renders without it. Passwords come from secret files, not the datastore, and are covered too.
"""

from __future__ import annotations

import base64
import json

import pytest

from confgen.calc import intent_for
from confgen.datastore import keys
from confgen.datastore.memory import MemoryDatastore
from confgen.render import render
from confgen.secrets import SecretStore
from confgen.validate import SecretRef

# The shape of the line the daemon renders (bgp.daemon.api_run_line), with the node image's paths.
API_RUN = (
    "/usr/bin/python3 -I -S /opt/calico-bgp/lib/python3.11/site-packages/bgp/exabgp/bridge.py"
    " /var/run/calico-bgp/api.sock"
)

HOSTILE = [
    '"',
    "'",
    "{",
    "}",
    ";",
    "\n",
    "#",
    "\\",
    "[ ]",
    '10.0.0.99"; }\nneighbor 6.6.6.6 {\n    peer-as 666;',
    "10.0.0.99; passive true",
    "10.0.0.99 # x",
    "x" * 100_000,
    "ünïcödé",
    "10.0.0.９９",  # non-ASCII digits
    "\x00",
    "$(reboot)",
    "`id`",
]
IDS = [f"h{i}" for i in range(len(HOSTILE))]


def base_store() -> MemoryDatastore:
    store = MemoryDatastore("node1")
    for i in (1, 2):
        store.put_resource(
            {
                "kind": "Node",
                "metadata": {"name": f"node{i}", "labels": {"rack": "r1"}},
                "spec": {"bgp": {"ipv4Address": f"10.0.0.1{i}/24"}},
            }
        )
    store.put_resource(
        {"kind": "BGPPeer", "metadata": {"name": "tor"}, "spec": {"peerIP": "10.0.0.254", "asNumber": 65000}}
    )
    return store


def rendered(store: MemoryDatastore, **kwargs) -> tuple[str, tuple[str, ...]]:
    intent = intent_for(store.snapshot(), "node1", **kwargs)
    return render(intent, api_run=API_RUN), intent.warnings


BASELINE, _ = rendered(base_store())


def peer(spec):
    return {"kind": "BGPPeer", "metadata": {"name": "evil"}, "spec": spec}


def node(bgp=None, labels=None):
    return {"kind": "Node", "metadata": {"name": "evil", "labels": labels or {}}, "spec": {"bgp": bgp or {}}}


def config(spec):
    return {"kind": "BGPConfiguration", "metadata": {"name": "default"}, "spec": spec}


P = {"peerIP": "10.0.0.99", "asNumber": 1}


def advertise(communities, value):
    return config(
        {"communities": communities, "prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": [value]}]}
    )


# (what, builder(hostile) -> resource, expected warning prefix)
FIELDS = [
    ("peer-ip", lambda v: peer({"peerIP": v, "asNumber": 65001}), "BGPPeer evil: spec.peerIP"),
    ("peer-as", lambda v: peer({"peerIP": "10.0.0.99", "asNumber": v}), "BGPPeer evil: spec.asNumber"),
    ("local-as", lambda v: peer({**P, "localASNumber": v}), "BGPPeer evil: spec.localASNumber"),
    ("node", lambda v: peer({"node": v, "peerIP": "10.0.0.99", "asNumber": 1}), "BGPPeer evil: spec.node"),
    (
        "node-selector",
        lambda v: peer({"nodeSelector": v, "peerIP": "10.0.0.99", "asNumber": 1}),
        "BGPPeer evil: spec.nodeSelector",
    ),
    ("peer-selector", lambda v: peer({"peerSelector": "rack == " + v}), "BGPPeer evil: spec.peerSelector"),
    ("filters", lambda v: peer({**P, "filters": [v]}), "BGPPeer evil: spec.filters[0]"),
    ("keepalive", lambda v: peer({**P, "keepaliveTime": v}), "BGPPeer evil: spec.keepaliveTime"),
    ("source-address", lambda v: peer({**P, "sourceAddress": v}), "BGPPeer evil: spec.sourceAddress"),
    ("next-hop-mode", lambda v: peer({**P, "nextHopMode": v}), "BGPPeer evil: spec.nextHopMode"),
    (
        "secret-name",
        lambda v: peer({**P, "password": {"secretKeyRef": {"name": v, "key": "k"}}}),
        "BGPPeer evil: spec.password.secretKeyRef.name",
    ),
    (
        "secret-key",
        lambda v: peer({**P, "password": {"secretKeyRef": {"name": "s", "key": v + "/"}}}),
        "BGPPeer evil: spec.password.secretKeyRef.key",
    ),
    ("node-ipv4", lambda v: node({"ipv4Address": v}), "Node evil: spec.bgp.ipv4Address"),
    ("node-ipv6", lambda v: node({"ipv6Address": v}), "Node evil: spec.bgp.ipv6Address"),
    ("node-as", lambda v: node({"ipv4Address": "10.0.0.99", "asNumber": v}), "Node evil: spec.bgp.asNumber"),
    (
        "node-rr",
        lambda v: node({"ipv4Address": "10.0.0.99", "routeReflectorClusterID": v}),
        "Node evil: spec.bgp.routeReflectorClusterID",
    ),
    (
        "node-label",
        lambda v: node({"ipv4Address": "10.0.0.99"}, {"rack": v}),
        "Node evil: metadata.labels.rack",
    ),
    (
        "community-name",
        lambda v: advertise([{"name": v, "value": "1:1"}], v),
        "BGPConfiguration default: spec.communities[0].name",
    ),
    (
        "community-value",
        lambda v: advertise([{"name": "c", "value": v}], "c"),
        "BGPConfiguration default: spec.communities[0].value",
    ),
    (
        "advertised-community",
        lambda v: advertise([], v),
        "BGPConfiguration default: spec.prefixAdvertisements[0].communities[0]",
    ),
    (
        "advertised-cidr",
        lambda v: config({"prefixAdvertisements": [{"cidr": v}]}),
        "BGPConfiguration default: spec.prefixAdvertisements[0].cidr",
    ),
    (
        "service-cidr",
        lambda v: config({"serviceClusterIPs": [{"cidr": v}]}),
        "BGPConfiguration default: spec.serviceClusterIPs[0].cidr",
    ),
    (
        "log-severity",
        lambda v: config({"logSeverityScreen": v}),
        "BGPConfiguration default: spec.logSeverityScreen",
    ),
    ("bind-mode", lambda v: config({"bindMode": v}), "BGPConfiguration default: spec.bindMode"),
    (
        "pool-cidr",
        lambda v: {"kind": "IPPool", "metadata": {"name": "evil"}, "spec": {"cidr": v}},
        "IPPool evil: spec.cidr",
    ),
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=IDS)
@pytest.mark.parametrize(("what", "build", "warning"), FIELDS, ids=[f[0] for f in FIELDS])
def test_hostile_field_values_are_rejected(what, build, warning, hostile):
    store = base_store()
    store.put_resource(build(hostile))
    text, warnings = rendered(store)
    assert text == BASELINE
    assert len(warnings) == 1 and warnings[0].startswith(warning), warnings
    assert "\n" not in warnings[0] and len(warnings[0]) < 400  # printable, bounded


@pytest.mark.parametrize(
    "hostile",
    [h for h in HOSTILE if "/" not in h],
    ids=[i for h, i in zip(HOSTILE, IDS, strict=True) if "/" not in h],
)
@pytest.mark.parametrize("kind", ["BGPPeer", "Node", "IPPool", "BGPFilter"])
def test_hostile_resource_names_are_rejected(kind, hostile):
    store = base_store()
    store.put(keys.resource_key(kind, hostile), json.dumps({"spec": {"peerIP": "10.0.0.99", "asNumber": 1}}))
    text, warnings = rendered(store)
    assert text == BASELINE
    assert (
        len(warnings) == 1
        and warnings[0].startswith(f"{kind} ")
        and "metadata.name is not a valid" in warnings[0]
    )
    assert "\n" not in warnings[0] and len(warnings[0]) < 400


@pytest.mark.parametrize("hostile", HOSTILE, ids=IDS)
def test_hostile_passwords_are_rejected_or_rendered_inert(tmp_path, hostile):
    (tmp_path / "bgp").mkdir()
    (tmp_path / "bgp" / "tor").write_bytes(hostile.encode())
    store = base_store()
    store.put_resource(peer({**P, "password": {"secretKeyRef": {"name": "bgp", "key": "tor"}}}))
    secrets, _ = SecretStore(tmp_path).read_all([SecretRef("bgp", "tor")])
    text, warnings = rendered(store, secrets=secrets)
    printable = 0 < len(hostile) <= 80 and all(" " <= c <= "~" for c in hostile)
    if printable:
        assert warnings == ()
        encoded = base64.b64encode(hostile.encode()).decode()
        assert f'    md5-password "{encoded}";\n    md5-base64 true;\n' in text
        assert text.count("\nneighbor ") == BASELINE.count("\nneighbor ") + 1
    else:
        assert text == BASELINE
        assert len(warnings) == 1 and warnings[0].startswith("BGPPeer evil: password secret bgp/tor: ")


def test_a_long_document_is_one_warning_not_a_crash():
    store = base_store()
    store.put_resource(peer({**P, "filters": ["a"] * 20_000 + ["B"]}))
    text, warnings = rendered(store)
    assert text == BASELINE
    assert warnings == ("BGPPeer evil: spec.filters[20000] 'B' is not a valid BGPFilter name",)


def test_a_value_over_the_size_limit_is_refused_before_parsing():
    store = base_store()
    store.put_resource(peer({**P, "filters": ["a"] * 100_000}))
    text, warnings = rendered(store)
    assert text == BASELINE
    assert len(warnings) == 1
    assert warnings[0].startswith(keys.resource_key("BGPPeer", "evil") + ": value is ")
    assert "bytes long (at most 262144)" in warnings[0]
