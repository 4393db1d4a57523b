"""kernel_routes: which routes the kernel should hold for what BGP learned, as a table."""

from __future__ import annotations

import pytest

from routes import resolve as resolve_module
from routes.model import (
    ADD,
    BLACKHOLE,
    DEL,
    LINK_DOWN,
    RTPROT_BIRD,
    RTPROT_BOOT,
    LinkEvent,
    Nexthop,
    Route,
    RouteEvent,
)
from routes.pools import DISABLED, ENABLED, ENABLED_IPIP_ONLY, ENABLED_NO_ENCAP_ONLY, KernelPool
from routes.recursive import NexthopResolver
from routes.resolve import Learned, bgp_metric, kernel_routes

IPIP = KernelPool("10.244.0.0/16", ipip_mode="Always")
CROSS = KernelPool("10.245.0.0/16", ipip_mode="CrossSubnet")
PLAIN = KernelPool("10.246.0.0/16")
VXLAN = KernelPool("10.247.0.0/16", vxlan_mode="Always")
PLAIN_IN_IPIP = KernelPool("10.244.128.0/17")
V6 = KernelPool("fd00:244::/48")
POOLS = [IPIP, CROSS, PLAIN, VXLAN, PLAIN_IN_IPIP, V6]
NODE_NET = "192.0.2.0/24"


EBGP_METRIC = 2**31 - 1 - 100  # no local-pref on the path: BIRD's default 100, then Calico's mapping


def via(*hops: Nexthop, dst: str, metric: int = EBGP_METRIC) -> Route:
    return Route(dst, nexthops=tuple(hops), proto=RTPROT_BIRD, priority=metric)


def tunl(gw: str) -> Nexthop:
    return Nexthop(gw, "tunl0", onlink=True)


def plain(gw: str) -> Nexthop:
    return Nexthop(gw)


CASES = [
    (
        "local block becomes a blackhole",
        {},
        ["10.244.1.0/26"],
        NODE_NET,
        [Route("10.244.1.0/26", BLACKHOLE, proto=RTPROT_BIRD)],
    ),
    (
        "our own block reflected back is ignored",
        {"10.244.1.0/26": ("192.0.2.7",)},
        ["10.244.1.0/26"],
        NODE_NET,
        [Route("10.244.1.0/26", BLACKHOLE, proto=RTPROT_BIRD)],
    ),
    (
        "IP borrowed from our block by another node is installed",
        {"10.244.1.9/32": ("192.0.2.7",)},
        ["10.244.1.0/26"],
        NODE_NET,
        [Route("10.244.1.0/26", BLACKHOLE, proto=RTPROT_BIRD), via(tunl("192.0.2.7"), dst="10.244.1.9/32")],
    ),
    ("/32 block gets no blackhole", {}, ["10.246.0.1/32"], NODE_NET, []),
    (
        "IPIP Always goes through tunl0 onlink even on-subnet",
        {"10.244.2.0/26": ("192.0.2.7",)},
        [],
        NODE_NET,
        [via(tunl("192.0.2.7"), dst="10.244.2.0/26")],
    ),
    (
        "CrossSubnet on-subnet next hop: plain",
        {"10.245.2.0/26": ("192.0.2.7",)},
        [],
        NODE_NET,
        [via(plain("192.0.2.7"), dst="10.245.2.0/26")],
    ),
    (
        "CrossSubnet off-subnet next hop: tunnel",
        {"10.245.2.0/26": ("198.51.100.7",)},
        [],
        NODE_NET,
        [via(tunl("198.51.100.7"), dst="10.245.2.0/26")],
    ),
    (
        "CrossSubnet without a node subnet: tunnel",
        {"10.245.2.0/26": ("192.0.2.7",)},
        [],
        "",
        [via(tunl("192.0.2.7"), dst="10.245.2.0/26")],
    ),
    (
        "CrossSubnet ECMP decides per next hop",
        {"10.245.2.0/26": ("198.51.100.7", "192.0.2.7")},
        [],
        NODE_NET,
        [via(plain("192.0.2.7"), tunl("198.51.100.7"), dst="10.245.2.0/26")],
    ),
    (
        "no-encap pool: plain via",
        {"10.246.2.0/26": ("192.0.2.7",)},
        [],
        NODE_NET,
        [via(plain("192.0.2.7"), dst="10.246.2.0/26")],
    ),
    ("VXLAN pool is never programmed", {"10.247.2.0/26": ("192.0.2.7",)}, ["10.247.1.0/26"], NODE_NET, []),
    (
        "outside every pool (ToR default route): plain via",
        {"0.0.0.0/0": ("192.0.2.1",)},
        [],
        NODE_NET,
        [via(plain("192.0.2.1"), dst="0.0.0.0/0")],
    ),
    (
        "longest match: no-encap pool nested in an IPIP pool",
        {"10.244.130.0/26": ("198.51.100.7",)},
        [],
        NODE_NET,
        [via(plain("198.51.100.7"), dst="10.244.130.0/26")],
    ),
    (
        "prefix wider than a pool is outside it",
        {"10.244.0.0/15": ("192.0.2.7",)},
        [],
        NODE_NET,
        [via(plain("192.0.2.7"), dst="10.244.0.0/15")],
    ),
    (
        "multipath: sorted, de-duplicated",
        {"10.246.3.0/26": ("192.0.2.9", "192.0.2.7", "192.0.2.9")},
        [],
        NODE_NET,
        [via(plain("192.0.2.7"), plain("192.0.2.9"), dst="10.246.3.0/26")],
    ),
    (
        "IPv6: no IPIP, plain via; v4 next hop of a v6 prefix dropped",
        {"fd00:244::40/122": ("fd00::7", "192.0.2.7"), "fd00:245::/64": ("192.0.2.7",)},
        [],
        NODE_NET,
        [via(plain("fd00::7"), dst="fd00:244::40/122")],
    ),
    (
        "output sorted numerically",
        {"10.246.10.0/26": ("192.0.2.7",), "10.246.9.0/26": ("192.0.2.7",)},
        [],
        NODE_NET,
        [via(plain("192.0.2.7"), dst="10.246.9.0/26"), via(plain("192.0.2.7"), dst="10.246.10.0/26")],
    ),
]


@pytest.mark.parametrize(
    ("learned", "blocks", "node_network", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_kernel_routes(learned, blocks, node_network, expected):
    assert kernel_routes(learned, blocks, POOLS, node_network) == expected


def test_a_next_hop_that_is_no_address_costs_only_its_route():
    learned = {
        "198.51.100.0/24": ("no-nexthop",),
        "198.51.101.0/24": ("no-nexthop", "192.0.2.7"),
        "10.246.2.0/26": ("192.0.2.7",),
    }
    routes = kernel_routes(learned, [], POOLS, NODE_NET)
    assert [(r.dst, r.nexthops) for r in routes] == [
        ("10.246.2.0/26", (Nexthop("192.0.2.7"),)),
        ("198.51.101.0/24", (Nexthop("192.0.2.7"),)),
    ]


def test_reject_cidrs_keep_service_ranges_out_of_the_kernel():
    gw = ("192.0.2.7",)
    learned = {"10.96.0.0/12": gw, "10.96.0.10/32": gw, "10.246.2.0/26": gw}
    routes = kernel_routes(learned, ["10.96.0.0/12"], POOLS, NODE_NET, reject_cidrs=["10.96.0.0/12"])
    assert [r.dst for r in routes] == ["10.246.2.0/26"]


@pytest.mark.parametrize(
    ("local_pref", "metric"),
    [
        (2**31 - 1 - 1024, 1024),  # a Calico node's normal priority (v3.32 export prologue)
        (2**31 - 1 - 512, 512),  # live migration: elevated priority
        (None, 2**31 - 1 - 100),  # eBGP: no local-pref on the wire, BIRD attaches 100
        (100, 2**31 - 1 - 100),
        (2**31 - 1, 0),
        (2**32 - 1, 0),  # beyond Calico's range: clamped, never negative
    ],
    ids=["normal", "elevated", "ebgp", "plain-100", "max", "overflow"],
)
def test_bgp_metric_is_calicos_mapping(local_pref, metric):
    assert bgp_metric(local_pref) == metric


def test_local_pref_sets_the_metric_of_the_route():
    learned = {"10.246.2.0/26": Learned(("192.0.2.7",), local_pref=2**31 - 1 - 1024)}
    assert kernel_routes(learned, [], POOLS, NODE_NET) == [via(plain("192.0.2.7"), dst="10.246.2.0/26",
                                                               metric=1024)]


# programClusterRoutes: which of our pools' blocks we program (blackhole for ours, route for remote ones)
MODE_LEARNED = {"10.244.2.0/26": ("192.0.2.7",), "10.246.2.0/26": ("192.0.2.7",),
                "10.247.2.0/26": ("192.0.2.7",), "172.16.0.0/16": ("192.0.2.1",)}
MODE_BLOCKS = ["10.244.1.0/26", "10.246.1.0/26", "10.247.1.0/26"]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (ENABLED, {"10.244.1.0/26", "10.244.2.0/26", "10.246.1.0/26", "10.246.2.0/26", "172.16.0.0/16"}),
        (DISABLED, {"172.16.0.0/16"}),
        (ENABLED_IPIP_ONLY, {"10.244.1.0/26", "10.244.2.0/26", "172.16.0.0/16"}),
        (ENABLED_NO_ENCAP_ONLY, {"10.246.1.0/26", "10.246.2.0/26", "172.16.0.0/16"}),
        ("SomethingNewer", {"10.244.1.0/26", "10.244.2.0/26", "10.246.1.0/26", "10.246.2.0/26",
                            "172.16.0.0/16"}),
    ],
    ids=["Enabled", "Disabled", "EnabledIPIPOnly", "EnabledNoEncapOnly", "unknown-is-default"],
)
def test_program_cluster_routes(mode, expected):
    routes = kernel_routes(MODE_LEARNED, MODE_BLOCKS, POOLS, NODE_NET, program_cluster_routes=mode)
    assert {r.dst for r in routes} == expected  # VXLAN (10.247) never; outside every pool always


# Recursive resolution against a kernel table: eth0 192.0.2.0/24 connected, a rack subnet behind a
# router, a default route, a blackhole, Felix's workload route, and an ECMP static route.
def kernel_table() -> list[Route]:
    return [
        Route("192.0.2.0/24", nexthops=(Nexthop("", "eth0"),), proto=2),
        Route("198.51.100.0/24", nexthops=(Nexthop("192.0.2.1", "eth0"),), proto=4),
        Route("0.0.0.0/0", nexthops=(Nexthop("192.0.2.254", "eth0"),), proto=16, priority=100),
        Route("0.0.0.0/0", nexthops=(Nexthop("192.0.2.253", "eth0"),), proto=16, priority=50),
        Route("203.0.113.0/24", BLACKHOLE, proto=4),
        Route("203.0.114.0/24", nexthops=(Nexthop("192.0.2.1", "eth0"), Nexthop("192.0.2.2", "eth0")),
              proto=4),
        Route("10.246.1.5/32", nexthops=(Nexthop("", "cali1"),), proto=RTPROT_BOOT),
        Route("198.51.100.77/32", nexthops=(Nexthop("192.0.2.9", "eth0"),), proto=RTPROT_BIRD),  # ours
        Route("fd00::/64", nexthops=(Nexthop("", "eth0"),), proto=2, priority=256),
    ]


@pytest.fixture
def resolver() -> NexthopResolver:
    r = NexthopResolver()
    r.load(kernel_table())
    return r


RESOLVE_CASES = [
    ("on the connected subnet: as it is", "192.0.2.7", (plain("192.0.2.7"),)),
    ("behind a router: via the router", "198.51.100.7", (Nexthop("192.0.2.1", "eth0"),)),
    ("only the default route: via its lowest metric", "100.64.0.1", (Nexthop("192.0.2.253", "eth0"),)),
    ("covered by a blackhole: unreachable", "203.0.113.5", ()),
    ("behind an ECMP route: both gateways",
     "203.0.114.9", (Nexthop("192.0.2.1", "eth0"), Nexthop("192.0.2.2", "eth0"))),
    ("our own proto-12 routes are never used", "198.51.100.77", (Nexthop("192.0.2.1", "eth0"),)),
    ("a device route: as it is", "10.246.1.5", (plain("10.246.1.5"),)),
    ("IPv6 connected", "fd00::12", (plain("fd00::12"),)),
    ("IPv6 without any route: unreachable", "fd01::12", ()),
]


@pytest.mark.parametrize(("gateway", "expected"), [c[1:] for c in RESOLVE_CASES],
                         ids=[c[0] for c in RESOLVE_CASES])
def test_resolver(resolver, gateway, expected):
    assert resolver.resolve(gateway) == expected


def test_resolver_passes_next_hops_through_until_the_first_dump():
    assert NexthopResolver().resolve("100.64.0.1") == (plain("100.64.0.1"),)


def test_kernel_routes_resolve_plain_next_hops_but_never_tunnel_ones(resolver):
    learned = {
        "10.246.2.0/26": ("198.51.100.7",),  # no-encap pool, next hop in another rack
        "10.244.2.0/26": ("198.51.100.7",),  # IPIP Always: the original next hop on tunl0
        "10.245.2.0/26": ("192.0.2.7", "198.51.100.8"),  # CrossSubnet ECMP: one plain, one tunnelled
        "172.16.0.0/16": ("203.0.113.5",),  # unreachable next hop: no route at all
        "172.17.0.0/16": ("203.0.113.5", "192.0.2.9"),  # one unreachable next hop of two
    }
    found = kernel_routes(learned, [], POOLS, NODE_NET, resolve=resolver.resolve)
    routes = {r.dst: r.nexthops for r in found}
    assert routes == {
        "10.246.2.0/26": (Nexthop("192.0.2.1", "eth0"),),
        "10.244.2.0/26": (tunl("198.51.100.7"),),
        "10.245.2.0/26": (plain("192.0.2.7"), tunl("198.51.100.8")),
        "172.17.0.0/16": (plain("192.0.2.9"),),
    }
    assert resolver.unresolved == {"203.0.113.5"}


def test_resolver_reports_only_changes_that_touch_a_next_hop_in_use(resolver):
    resolver.resolve("198.51.100.7")
    rack = Route("198.51.100.0/25", nexthops=(Nexthop("192.0.2.3", "eth0"),), proto=4)
    pod = Route("10.246.1.6/32", nexthops=(Nexthop("", "cali2"),), proto=RTPROT_BOOT)
    mine = Route("198.51.100.0/26", nexthops=(Nexthop("192.0.2.9", "eth0"),), proto=RTPROT_BIRD)
    assert not resolver.observe(RouteEvent(ADD, pod, "cali2"))  # a workload elsewhere: no recomputation
    assert not resolver.observe(RouteEvent(ADD, mine, "eth0"))  # our own routes are not used
    assert resolver.observe(RouteEvent(ADD, rack, "eth0"))  # more specific: the next hop moves
    assert resolver.resolve("198.51.100.7") == (Nexthop("192.0.2.3", "eth0"),)
    assert resolver.observe(RouteEvent(DEL, rack, "eth0"))
    assert resolver.resolve("198.51.100.7") == (Nexthop("192.0.2.1", "eth0"),)


def test_resolver_forgets_routes_of_a_downed_device_silently_flushed_by_ipv4(resolver):
    resolver.resolve("198.51.100.7")
    assert resolver.observe(LinkEvent(LINK_DOWN, 2, "eth0"))
    assert resolver.resolve("198.51.100.7") == ()
    assert not resolver.observe(LinkEvent(LINK_DOWN, 9, "eth9"))


def test_the_per_intent_setting_is_worked_out_once_and_never_mixes_intents():
    # What kernel_routes keeps per (pools, blocks, subnet, rejects, mode) must answer exactly as a fresh
    # computation for each, in any order of calls, and be reused while they stay the same.
    intents = [
        (MODE_BLOCKS, POOLS, NODE_NET, (), ENABLED),
        (MODE_BLOCKS, POOLS, NODE_NET, (), DISABLED),
        (["10.244.1.0/26"], POOLS, NODE_NET, ("10.244.0.0/16",), ENABLED),
        (MODE_BLOCKS, [PLAIN, IPIP], "10.244.1.0/24", (), ENABLED),
        ([], [KernelPool(p.cidr, p.ipip_mode, p.vxlan_mode) for p in POOLS], "", (), ENABLED_IPIP_ONLY),
    ]

    def routes(intent):
        blocks, pools, node_net, rejects, mode = intent
        return kernel_routes(
            MODE_LEARNED, blocks, pools, node_net, reject_cidrs=rejects, program_cluster_routes=mode
        )

    fresh = []
    for intent in intents:
        resolve_module._setting.cache_clear()
        fresh.append(routes(intent))
    resolve_module._setting.cache_clear()
    pairs = list(zip(intents, fresh, strict=True))
    for intent, expected in [*pairs, *reversed(pairs)]:
        assert routes(intent) == expected
    info = resolve_module._setting.cache_info()
    assert info.misses == len(intents) and info.hits == len(intents)
    assert len({id(r) for _ in range(2) for r in routes(intents[0]) if r.type == BLACKHOLE}) == len(
        [r for r in fresh[0] if r.type == BLACKHOLE]
    )  # a local block's blackhole is one shared object, not one per call
