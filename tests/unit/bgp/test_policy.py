"""Export and import policy, one rule per row (docs/calico-model.md; RFC 4271, RFC 4456)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgp.exabgp.events import PathAttributes
from bgp.policy import Candidate, NodePolicy
from bgp.rib import Path
from confgen.bgpfilter import BGPFilter, FilterRule
from confgen.intent import GLOBAL, MESH, NodeIntent, PeerIntent, PoolIntent, PrefixAdvertisement

ME, AS = "10.0.0.11", 64512


def peer(address, *, peer_as=AS, kind=MESH, rr_client=False, filters=(), next_hop_mode="Auto", family="ipv4"):
    return PeerIntent(
        name=f"p{address}",
        address=address,
        family=family,
        peer_as=peer_as,
        local_as=AS,
        local_address=ME if family == "ipv4" else "fd00::11",
        kind=kind,
        rr_client=rr_client,
        filters=filters,
        next_hop_mode=next_hop_mode,
    )


def node(**kw):
    base = dict(
        node="node1",
        router_id=ME,
        local_as=AS,
        ipv4_address=ME,
        ipv4_network="10.0.0.0/24",
        pools=(PoolIntent("192.168.0.0/16"), PoolIntent("172.16.0.0/16", disable_bgp_export=True)),
        local_blocks=("192.168.1.0/26",),
    )
    base.update(kw)
    return NodeIntent(**base)


def learned(prefix, from_peer, *, as_path=(), nexthop=None, **attrs):
    return Path(
        prefix=prefix,
        peer=from_peer,
        nexthop=nexthop or from_peer,
        attributes=PathAttributes(as_path=as_path, **attrs),
        ebgp=False,
    )


MESH12, MESH13 = peer("10.0.0.12"), peer("10.0.0.13")
TOR = peer("10.0.0.1", peer_as=65001, kind=GLOBAL)
CLIENT = peer("10.0.0.14", rr_client=True)


@pytest.mark.parametrize(
    "prefix, expected",
    [
        ("192.168.1.0/26", True),  # our block
        ("192.168.1.5/32", False),  # a /32 inside our block: the block covers it
        ("192.168.2.9/32", True),  # a borrowed IP: inside a pool, outside our blocks
        ("172.16.0.0/26", False),  # disableBGPExport pool
        ("10.0.0.0/24", False),  # the host subnet: not Calico's
        ("0.0.0.0/0", False),  # a ToR's default route: not Calico's
        ("10.96.0.0/12", True),  # a service range
    ],
    ids=["block", "slash32-in-block", "borrowed", "disabled-pool", "host-subnet", "default", "service"],
)
def test_calico_default_export(prefix, expected):
    policy = NodePolicy(node(service_cluster_ips=("10.96.0.0/12",)))
    assert policy.calico_export(Candidate(prefix), to_ibgp=True) is expected


def test_reflector_re_exports_loadbalancer_ips_only_when_reflecting():
    lb = Candidate("192.0.2.7/32")
    assert not NodePolicy(node(service_loadbalancer_ips=("192.0.2.7/32",))).calico_export(lb, True)
    rr = NodePolicy(node(service_loadbalancer_ips=("192.0.2.7/32",), rr_cluster_id="224.0.0.1"))
    assert rr.calico_export(lb, True)


@pytest.mark.parametrize(
    "rr, source, target, exported",
    [
        (False, MESH12, MESH13, False),  # RFC 4271: no iBGP -> iBGP without reflection
        (True, CLIENT, MESH13, True),  # client route -> non-client
        (True, MESH12, CLIENT, True),  # non-client route -> client
        (True, MESH12, MESH13, False),  # non-client -> non-client: never
        (False, TOR, MESH13, True),  # eBGP-learned -> iBGP
        (False, MESH12, TOR, True),  # iBGP-learned -> eBGP
        (False, MESH12, MESH12, False),  # never back to the sender
    ],
    ids=[
        "no-reflection",
        "client-to-all",
        "nonclient-to-client",
        "nonclient-to-nonclient",
        "ebgp-to-ibgp",
        "ibgp-to-ebgp",
        "split-horizon",
    ],
)
def test_propagation_rules(rr, source, target, exported):
    policy = NodePolicy(node(rr_cluster_id="224.0.0.1" if rr else ""))
    path = learned("192.168.3.0/26", source.address)
    assert (policy.export(target, Candidate(path.prefix, path), source) is not None) is exported


def test_reflection_sets_originator_and_cluster_list_and_keeps_next_hop():
    policy = NodePolicy(node(rr_cluster_id="224.0.0.1"))
    path = learned("192.168.3.0/26", CLIENT.address, cluster_list=("1.1.1.1",))
    adv = policy.export(MESH12, Candidate(path.prefix, path), CLIENT)
    assert adv.originator_id == CLIENT.address
    assert adv.cluster_list == ("224.0.0.1", "1.1.1.1")
    assert adv.nexthop == CLIENT.address


def test_own_routes_carry_calicos_priority_local_pref_towards_ibgp_only():
    policy = NodePolicy(node())
    assert policy.export(MESH12, Candidate("192.168.1.0/26")).local_pref == 2**31 - 1 - 1024
    assert policy.export(TOR, Candidate("192.168.1.0/26")).local_pref is None


def test_ebgp_export_prepends_our_as_and_sets_next_hop_self():
    policy = NodePolicy(node())
    own = policy.export(TOR, Candidate("192.168.1.0/26"))
    assert (own.as_path, own.nexthop, own.local_pref) == ((AS,), ME, None)
    path = learned("192.168.3.0/26", "10.0.0.12", as_path=(), local_pref=100)
    relayed = policy.export(TOR, Candidate(path.prefix, path), MESH12)
    assert relayed.as_path == (AS,) and relayed.nexthop == ME


def test_no_export_to_an_ebgp_peer_already_in_the_path():
    path = learned("192.168.3.0/26", "10.0.0.12", as_path=(65001, 65002))
    assert NodePolicy(node()).export(TOR, Candidate(path.prefix, path), MESH12) is None


@pytest.mark.parametrize(
    "mode, expected",
    [("Auto", "10.0.0.1"), ("Self", ME), ("Keep", "10.0.0.1")],
)
def test_next_hop_mode_towards_ibgp(mode, expected):
    policy = NodePolicy(node())
    path = learned("192.168.3.0/26", TOR.address)
    target = peer("10.0.0.12", kind=GLOBAL, next_hop_mode=mode)
    assert policy.export(target, Candidate(path.prefix, path), TOR).nexthop == expected


def test_prefix_advertisements_add_communities_only_inside_their_cidr():
    adverts = (PrefixAdvertisement("192.168.0.0/16", ("64512:100",), ("64512:1:2",)),)
    policy = NodePolicy(node(prefix_advertisements=adverts))
    adv = policy.export(MESH12, Candidate("192.168.1.0/26"))
    assert adv.communities == ((64512, 100),) and adv.large_communities == ((64512, 1, 2),)
    svc = NodePolicy(node(prefix_advertisements=adverts, service_cluster_ips=("10.96.0.0/12",)))
    assert svc.export(MESH12, Candidate("10.96.0.0/12")).communities == ()


def rule(action, cidr="", op="", **kw):
    return FilterRule(action=action, cidr=cidr, match_operator=op, **kw)


@pytest.mark.parametrize(
    "rules, prefix, ifname, from_bgp, exported",
    [
        ((rule("Accept", "10.0.0.0/24", "Equal"),), "10.0.0.0/24", "", False, True),  # accept bypasses
        ((rule("Reject", "192.168.1.0/26", "Equal"),), "192.168.1.0/26", "", False, False),  # reject wins
        ((rule("Reject", "192.168.0.0/16", "In"),), "192.168.1.0/26", "", False, False),
        ((rule("Reject", "192.168.0.0/16", "NotIn"),), "192.168.1.0/26", "", False, True),
        ((rule("Reject", "192.168.1.0/26", "NotEqual"),), "192.168.1.0/26", "", False, True),
        (
            (rule("Reject", "192.168.0.0/16", "In", prefix_length=(32, 32)),),
            "192.168.1.0/26",
            "",
            False,
            True,
        ),
        (
            (rule("Reject", "192.168.0.0/16", "In", prefix_length=(32, 32)),),
            "192.168.2.9/32",
            "",
            False,
            False,
        ),
        ((rule("Reject", source="RemotePeers"),), "192.168.1.0/26", "", False, True),
        ((rule("Accept", source="RemotePeers"),), "0.0.0.0/0", "", True, True),
        ((rule("Reject", interface="cali*"),), "192.168.2.9/32", "cali1234", False, False),
        ((rule("Reject", interface="eth*"),), "192.168.2.9/32", "cali1234", False, True),
        ((), "10.0.0.0/24", "", False, False),  # no rule: Calico's default policy
    ],
    ids=[
        "accept-equal",
        "reject-equal",
        "reject-in",
        "notin",
        "notequal",
        "prefixlen-miss",
        "prefixlen-hit",
        "source-local",
        "source-remote",
        "interface-hit",
        "interface-miss",
        "fallthrough",
    ],
)
def test_bgpfilter_export(rules, prefix, ifname, from_bgp, exported):
    flt = BGPFilter(name="f", export_v4=tuple(rules))
    target = peer("10.0.0.1", peer_as=65001, kind=GLOBAL, filters=("f",))
    policy = NodePolicy(node(), {"f": flt})
    path = learned(prefix, "10.0.0.12") if from_bgp else None
    source = MESH12 if from_bgp else None
    assert (policy.export(target, Candidate(prefix, path, ifname), source) is not None) is exported


def test_filters_never_apply_to_the_mesh():
    flt = BGPFilter(name="f", export_v4=(rule("Reject"),))
    policy = NodePolicy(node(), {"f": flt})
    mesh_with_filter = peer("10.0.0.12", filters=("f",))  # ignored: kind is mesh
    assert policy.export(mesh_with_filter, Candidate("192.168.1.0/26")) is not None


@pytest.mark.parametrize(
    "attrs, rr, importable",
    [
        ({}, False, True),
        ({"cluster_list": ("224.0.0.1",)}, True, False),  # our own cluster: a reflection loop
        ({"originator_id": ME}, False, False),  # our own route coming back
        ({"as_path": (65001, AS)}, False, False),  # eBGP path through our AS
    ],
    ids=["plain", "cluster-loop", "originator-loop", "as-loop"],
)
def test_import_loop_prevention(attrs, rr, importable):
    policy = NodePolicy(node(rr_cluster_id="224.0.0.1" if rr else ""))
    source = TOR if "as_path" in attrs else MESH12
    path = learned("192.168.3.0/26", source.address, **attrs)
    assert policy.accept_import(source, path) is importable


def test_import_filter_reject():
    flt = BGPFilter(name="f", import_v4=(rule("Reject", "0.0.0.0/0", "Equal"),))
    policy = NodePolicy(node(), {"f": flt})
    tor = peer("10.0.0.1", peer_as=65001, kind=GLOBAL, filters=("f",))
    assert not policy.accept_import(tor, learned("0.0.0.0/0", tor.address))
    assert policy.accept_import(tor, learned("10.20.0.0/16", tor.address))


OPERATIONS_FILTER = BGPFilter(
    name="ops",
    export_v4=(
        rule("Accept", "192.168.2.0/24", "In", operations=(("addCommunity", "65000:7"),)),
        rule("Accept", "192.168.3.0/24", "In", operations=(("prependASPath", "65000 65000"),)),
    ),
)
SHARING_PEERS = (
    MESH12,
    MESH13,
    TOR,
    peer("10.0.0.2", peer_as=65002, kind=GLOBAL, filters=("ops",)),
    peer("10.0.0.3", kind=GLOBAL, filters=("ops",), next_hop_mode="Self"),
)


@given(
    st.lists(
        st.tuples(st.sampled_from(SHARING_PEERS), st.integers(0, 3), st.integers(0, 255)),
        min_size=1,
        max_size=40,
    )
)
def test_own_routes_share_one_advertisement_per_attribute_set_and_equal_a_fresh_decision(asks):
    """The policy hands out one object per (peer, communities, filter operations) for our own routes: each
    equals what a policy that never answered before gives, and equal ones are the same object."""
    adverts = (PrefixAdvertisement("192.168.2.0/24", ("64512:100",), ()),)
    intent = node(prefix_advertisements=adverts)
    shared = NodePolicy(intent, {"ops": OPERATIONS_FILTER})
    given_out: dict[tuple, object] = {}
    for target, subnet, host in asks:
        prefix = f"192.168.{subnet}.{host}/32"
        adv = shared.export(target, Candidate(prefix, None, "cali1"))
        fresh = NodePolicy(intent, {"ops": OPERATIONS_FILTER}).export(
            target, Candidate(prefix, None, "cali1")
        )
        assert adv == fresh
        if adv is not None:
            assert given_out.setdefault((target.address, adv), adv) is adv
