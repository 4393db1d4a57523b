"""routes.pools.network: its IPv4 fast path agrees with ipaddress on every input, good or bad."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routes.pools import network, parse_prefix

CASES = [
    "10.1.2.3/24", "10.0.0.1", "10.0.0.1/32", "0.0.0.0/0", "255.255.255.255/32", "fd00::1/64", "::/0",
    "10.0.0.1/33", "10.0.0/24", "x", "", "/", "10.0.0.1/", "10.0.0.1/-1", "010.0.0.1/32", "10.0.0.1/ 24",
    "10.0.0.1/24/1", "1.2.3.4.5/32", "10.0.0.256/32", "10.0.0.1/+8", "10.0.0.1/٣", "fd00::1/129",
]


def _reference(cidr: str):
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return ValueError


def _ours(cidr: str):
    try:
        return network(cidr)
    except ValueError:
        return ValueError


@pytest.mark.parametrize("cidr", CASES)
def test_network_matches_ipaddress(cidr):
    assert _ours(cidr) == _reference(cidr)


@given(st.ip_addresses(v=4), st.integers(min_value=-1, max_value=40))
def test_network_matches_ipaddress_for_any_ipv4_prefix(addr, length):
    cidr = f"{addr}/{length}"
    assert _ours(cidr) == _reference(cidr)


def _parsed_reference(cidr: str):
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return ValueError
    return (net.with_prefixlen, net.version, int(net.network_address), net.prefixlen,
            int(net.broadcast_address))


def _parsed(cidr: str):
    try:
        return parse_prefix(cidr)
    except ValueError:
        return ValueError


@pytest.mark.parametrize("cidr", [*CASES, "10.1.2.0/24", "10.1.2.0/08", "192.168.64.1/32", "fd00::/64"])
def test_parse_prefix_matches_ipaddress(cidr):
    assert _parsed(cidr) == _parsed_reference(cidr)


@given(st.ip_addresses(), st.integers(min_value=-1, max_value=130))
def test_parse_prefix_matches_ipaddress_for_any_prefix(addr, length):
    cidr = f"{addr}/{length}"
    assert _parsed(cidr) == _parsed_reference(cidr)
