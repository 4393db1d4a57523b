"""The import guard's rules: which learned prefixes are refused, and what counts as a connected subnet."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgp import import_guard as g
from bgp.exabgp.events import PathAttributes
from bgp.import_guard import GuardRules, ImportScreen, connected_subnets
from bgp.rib import Path

NODE_V4 = "10.0.0.0/24"
NODE_V6 = "fd00::/64"
BLOCK_V4 = "192.168.1.0/26"
RULES = GuardRules(connected=(NODE_V4, NODE_V6), own_blocks=(BLOCK_V4, "fd00:10::/122"))

CASES = [
    # ordinary routes: remote blocks, borrowed /32s, the ToR's default, rack prefixes
    ("remote block", "192.168.2.0/26", None),
    ("remote v6 block", "fd00:10::40/122", None),
    ("borrowed /32 inside our block", "192.168.1.5/32", None),
    ("borrowed /32 elsewhere", "192.168.7.9/32", None),
    ("default route", "0.0.0.0/0", None),
    ("v6 default route", "::/0", None),
    ("rack prefix", "10.1.0.0/24", None),
    ("covers the node subnet", "10.0.0.0/16", None),
    ("the node subnet itself (left to the foreign-route rule)", NODE_V4, None),
    ("the v6 node subnet itself", NODE_V6, None),
    ("covers multicast", "192.0.0.0/2", None),
    # special-purpose blocks, IPv4
    ("this network", "0.0.0.0/8", g.UNSPECIFIED),
    ("unspecified host", "0.0.0.0/32", g.UNSPECIFIED),
    ("inside this network", "0.1.2.0/24", g.UNSPECIFIED),
    ("loopback", "127.0.0.0/8", g.LOOPBACK),
    ("loopback host", "127.0.0.1/32", g.LOOPBACK),
    ("link-local", "169.254.0.0/16", g.LINK_LOCAL),
    ("link-local host", "169.254.169.254/32", g.LINK_LOCAL),
    ("multicast", "224.0.0.0/4", g.MULTICAST),
    ("multicast group", "239.1.2.3/32", g.MULTICAST),
    ("limited broadcast", "255.255.255.255/32", g.BROADCAST),
    # special-purpose blocks, IPv6
    ("v6 unspecified", "::/128", g.UNSPECIFIED),
    ("v6 loopback", "::1/128", g.LOOPBACK),
    ("v4-mapped", "::ffff:10.0.0.0/104", g.IPV4_MAPPED),
    ("v6 link-local", "fe80::/10", g.LINK_LOCAL),
    ("v6 link-local /64", "fe80::/64", g.LINK_LOCAL),
    ("v6 multicast", "ff02::1/128", g.MULTICAST),
    # on-link: more specific than a connected subnet
    ("a neighbour node's address", "10.0.0.12/32", g.ON_LINK),
    ("our own address", "10.0.0.11/32", g.ON_LINK),
    ("half the node subnet", "10.0.0.128/25", g.ON_LINK),
    ("a v6 neighbour", "fd00::12/128", g.ON_LINK),
    ("a v6 more-specific", "fd00::/65", g.ON_LINK),
    # nonsense
    ("not a prefix", "10.0.0.300/32", g.MALFORMED),
    ("empty", "", g.MALFORMED),
    ("command injection", "10.0.0.0/24\nshutdown", g.MALFORMED),
    ("scope id", "fe80::1%eth0/128", g.MALFORMED),
]


@pytest.mark.parametrize(("prefix", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refusal_table(prefix, reason):
    refusal = RULES.refusal(prefix)
    assert (refusal.reason if refusal else None) == reason


def test_on_link_detail_names_the_subnet():
    assert str(RULES.refusal("10.0.0.12/32")) == "on-link: more specific than connected subnet 10.0.0.0/24"


def test_a_block_inside_a_connected_subnet_keeps_its_borrowed_ips():
    """A node whose blocks sit inside an interface's subnet (an overlapping pool): the /32s borrowed from
    our blocks still install, other hosts of the subnet do not."""
    rules = GuardRules(connected=("192.168.0.0/16",), own_blocks=(BLOCK_V4,))
    assert rules.refusal("192.168.1.5/32") is None
    assert rules.refusal("192.168.2.5/32").reason == g.ON_LINK


def test_without_connected_subnets_only_special_blocks_are_refused():
    rules = GuardRules()
    assert rules.refusal("10.0.0.12/32") is None
    assert rules.refusal("169.254.1.0/24").reason == g.LINK_LOCAL


SUBNETS = [
    ("plain interface", ["10.0.0.11/24"], [], ("10.0.0.0/24",)),
    ("tunl0 and vxlan /32s make no subnet", ["10.0.0.11/24", "192.168.1.0/32", "192.168.1.1/32"], [],
     ("10.0.0.0/24",)),
    ("v6 host address makes none", ["fd00::11/128", "fd00::11/64"], [], ("fd00::/64",)),
    ("link-local and loopback make none", ["fe80::1/64", "169.254.1.1/16", "127.0.0.1/8", "::1/128"], [], ()),
    ("node resource merged, deduplicated", ["10.0.0.11/24"], ["10.0.0.0/24", "fd00::/64", ""],
     ("10.0.0.0/24", "fd00::/64")),
    ("node resource alone", [], ["10.0.0.0/24"], ("10.0.0.0/24",)),
    ("garbage skipped", ["nonsense", "10.0.0.300/24", "10.0.1.1/24"], [], ("10.0.1.0/24",)),
    ("an address claiming /0 makes none", ["10.0.0.11/0"], [], ()),
    ("sorted v4 first", ["fd00:1::1/64", "10.0.1.1/24", "10.0.0.1/24"], [],
     ("10.0.0.0/24", "10.0.1.0/24", "fd00:1::/64")),
]


@pytest.mark.parametrize(
    ("addresses", "node", "expected"), [c[1:] for c in SUBNETS], ids=[c[0] for c in SUBNETS]
)
def test_connected_subnets(addresses, node, expected):
    assert connected_subnets(addresses, node) == expected


@given(st.text(max_size=80))
def test_any_string_is_refused_or_accepted_never_raised(text):
    refusal = RULES.refusal(text)
    reasons = {g.MALFORMED, g.UNSPECIFIED, g.LOOPBACK, g.LINK_LOCAL, g.MULTICAST, g.BROADCAST}
    assert refusal is None or refusal.reason in reasons | {g.IPV4_MAPPED, g.ON_LINK}


@given(st.sampled_from(g.SPECIAL_BLOCKS), st.integers(0, 2**128 - 1), st.integers(0, 128))
def test_every_prefix_inside_a_special_block_is_refused(block, bits, extra):
    cidr, reason = block
    net = ipaddress.ip_network(cidr)
    length = min(net.prefixlen + extra, net.max_prefixlen)
    host_bits = net.max_prefixlen - net.prefixlen
    address = int(net.network_address) | (bits & ((1 << host_bits) - 1))
    inner = ipaddress.ip_network((address, length), strict=False)
    assert RULES.refusal(inner.with_prefixlen).reason == reason


@given(st.integers(0, 2**32 - 1), st.integers(0, 24))
def test_prefixes_no_more_specific_than_the_node_subnet_are_never_refused_as_on_link(address, length):
    prefix = ipaddress.ip_network((address, length), strict=False)
    refusal = RULES.refusal(prefix.with_prefixlen)
    assert refusal is None or refusal.reason != g.ON_LINK


def paths(prefix, *peers):
    return [Path(prefix, peer, peer, PathAttributes()) for peer in peers]


def test_screen_records_refusals_and_forgets_them_when_the_paths_go():
    screen = ImportScreen()
    screen.set_node(("10.0.0.0/24", ""), (BLOCK_V4,))
    assert screen.refuses("10.0.0.12/32", paths("10.0.0.12/32", "10.0.0.13"))
    assert screen.refused["10.0.0.12/32"].reason == g.ON_LINK
    assert not screen.refuses("192.168.2.0/26", paths("192.168.2.0/26", "10.0.0.13"))
    assert not screen.refuses("10.0.0.12/32", [])  # withdrawn
    assert screen.refused == {}


def test_screen_rules_change_only_when_the_subnets_do():
    screen = ImportScreen()
    assert screen.set_node(("10.0.0.0/24", ""), ())
    assert not screen.set_interface_addresses(["10.0.0.11/24", "192.168.1.0/32"])  # same subnet
    assert screen.set_interface_addresses(["10.0.0.11/24", "172.16.0.5/16"])
    assert screen.rules.connected == ("10.0.0.0/24", "172.16.0.0/16")
    assert not screen.set_node(("10.0.0.0/24", ""), ())


def test_screen_warnings_are_rate_limited(caplog):
    now = [0.0]
    screen = ImportScreen(clock=lambda: now[0])
    for i in range(50):
        screen.refuses(f"169.254.{i}.0/24", paths(f"169.254.{i}.0/24", "10.0.0.12"))
    assert len([r for r in caplog.records if "import guard" in r.getMessage()]) == 10
    now[0] = 61.0
    screen.refuses("169.254.200.0/24", paths("169.254.200.0/24", "10.0.0.12"))
    assert "40 similar warnings suppressed" in caplog.records[-1].getMessage()
