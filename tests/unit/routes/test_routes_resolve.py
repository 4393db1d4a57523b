"""kernel_routes: which routes the kernel should hold for what BGP learned, as a table."""

from __future__ import annotations

import pytest

from routes.model import BLACKHOLE, RTPROT_BIRD, Nexthop, Route
from routes.pools import KernelPool
from routes.resolve import kernel_routes

IPIP = KernelPool("10.244.0.0/16", ipip_mode="Always")
CROSS = KernelPool("10.245.0.0/16", ipip_mode="CrossSubnet")
PLAIN = KernelPool("10.246.0.0/16")
VXLAN = KernelPool("10.247.0.0/16", vxlan_mode="Always")
PLAIN_IN_IPIP = KernelPool("10.244.128.0/17")
V6 = KernelPool("fd00:244::/48")
POOLS = [IPIP, CROSS, PLAIN, VXLAN, PLAIN_IN_IPIP, V6]
NODE_NET = "192.0.2.0/24"


def via(*hops: Nexthop, dst: str) -> Route:
    return Route(dst, nexthops=tuple(hops), proto=RTPROT_BIRD)


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


def test_reject_cidrs_keep_service_ranges_out_of_the_kernel():
    gw = ("192.0.2.7",)
    learned = {"10.96.0.0/12": gw, "10.96.0.10/32": gw, "10.246.2.0/26": gw}
    routes = kernel_routes(learned, ["10.96.0.0/12"], POOLS, NODE_NET, reject_cidrs=["10.96.0.0/12"])
    assert [r.dst for r in routes] == ["10.246.2.0/26"]
