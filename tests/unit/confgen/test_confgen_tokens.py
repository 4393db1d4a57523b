"""The sink token grammar shared by the config renderer, the API command builder and the nft writer."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confgen import tokens
from confgen.tokens import TokenError

ADDRESSES = [
    # (value, version, accepted, reason when refused)
    ("10.0.0.1", None, True, ""),
    ("0.0.0.0", 4, True, ""),
    ("255.255.255.255", None, True, ""),
    ("fd00::1", None, True, ""),
    ("fd00::1", 6, True, ""),
    ("::", 6, True, ""),
    ("2001:db8::a:b", None, True, ""),
    ("fd00::1%eth0", None, False, "scope id"),
    ("fd00::%x\nshutdown\n", None, False, "scope id"),
    ("fe80::1%1", 6, False, "scope id"),
    ("::ffff:10.0.0.1", None, False, "IPv4-mapped"),
    ("::ffff:a00:1", 6, False, "IPv4-mapped"),
    ("fd00:0::1", None, False, "canonical form (fd00::1)"),
    ("FD00::1", None, False, "canonical form (fd00::1)"),
    ("fd00:0:0:0:0:0:0:1", None, False, "canonical form (fd00::1)"),
    ("010.0.0.1", None, False, "not an IP address"),  # leading zeros: octal to some parsers
    ("10.0.0.01", 4, False, "not an IP address"),
    ("10.0.0.９", None, False, "not an IP address"),  # a non-ASCII digit
    ("10.0.0.256", None, False, "not an IP address"),
    ("10.0.0.1 ", None, False, "whitespace"),
    (" 10.0.0.1", None, False, "whitespace"),
    ("10.0.0.1\n", None, False, "whitespace or a control character"),
    ("10.0.0.1\x00", None, False, "control character"),
    ("fd00::1\x85", None, False, "control character"),
    ("10.0.0.1; shutdown", None, False, "whitespace"),
    ("10.0.0.1/32", None, False, "not an IP address"),
    ("", None, False, "not an IP address"),
    ("1" * 1_000_000, None, False, "1000000 characters long"),
    ("10.0.0.1", 6, False, "not an IPv6 address"),
    ("fd00::1", 4, False, "not an IPv4 address"),
    (None, None, False, "not text"),
    (167772161, None, False, "not text"),
    (b"10.0.0.1", None, False, "not text"),
    (ipaddress.ip_address("10.0.0.1"), None, False, "not text"),
]


def _ids(rows):
    return [repr(row[0])[:40] for row in rows]


@pytest.mark.parametrize(("value", "version", "accepted", "reason"), ADDRESSES, ids=_ids(ADDRESSES))
def test_addresses(value, version, accepted, reason):
    if accepted:
        assert tokens.address(value, version) == value
    else:
        with pytest.raises(TokenError, match=re.escape(reason)):
            tokens.address(value, version)


PREFIXES = [
    ("10.0.0.1/32", None, True, ""),
    ("10.65.1.0/26", 4, True, ""),
    ("0.0.0.0/0", None, True, ""),
    ("fd00:96::/112", 6, True, ""),
    ("::/0", None, True, ""),
    ("fd00::1/128", None, True, ""),
    ("fd00:96::%x\nshutdown\n/112", None, False, "scope id"),
    ("fd00::%eth0/64", None, False, "scope id"),
    ("10.0.0.1/24", None, False, "host bits set (10.0.0.0/24)"),
    ("10.0.0.0/33", None, False, "not an IP prefix"),
    ("10.0.0.0/024", None, False, "canonical form (10.0.0.0/24)"),
    ("10.0.0.0/255.255.255.0", None, False, "canonical form (10.0.0.0/24)"),
    ("010.0.0.0/24", None, False, "not an IP prefix"),
    ("10.0.0.0", None, False, "no prefix length"),
    ("fd00:0::/64", None, False, "canonical form (fd00::/64)"),
    ("FD00::/64", 6, False, "canonical form (fd00::/64)"),
    ("::ffff:10.0.0.0/104", None, False, "IPv4-mapped"),
    ("10.0.0.0/24\n", None, False, "whitespace or a control character"),
    ("10.0.0.0/24 10.1.0.0/16", None, False, "whitespace"),
    ("10.0.0.0/-1", None, False, "not an IP prefix"),
    ("10.0.0.0/24", 6, False, "not an IPv6 address"),
    ("10.0.0.1/32", 6, False, "not an IPv6 address"),
    ("fd00::/64", 4, False, "not an IPv4 address"),
    ("9" * 100, None, False, "100 characters long"),
    (None, None, False, "not text"),
]


@pytest.mark.parametrize(("value", "version", "accepted", "reason"), PREFIXES, ids=_ids(PREFIXES))
def test_prefixes(value, version, accepted, reason):
    if accepted:
        assert tokens.prefix(value, version) == value
    else:
        with pytest.raises(TokenError, match=re.escape(reason)):
            tokens.prefix(value, version)


INTEGERS = [
    (0, 0, 10, True, ""),
    (10, 0, 10, True, ""),
    (2**32 - 1, 0, 2**32 - 1, True, ""),
    (-1, 0, 10, False, "out of range (0-10)"),
    (11, 0, 10, False, "out of range"),
    (2**64, 0, 2**32 - 1, False, "out of range"),
    (10**1000, 0, 10, False, "out of range"),
    (True, 0, 10, False, "not an integer (a bool)"),
    ("5", 0, 10, False, "not an integer (a str)"),
    ("5\nshutdown", 0, 10, False, "not an integer"),
    (5.0, 0, 10, False, "not an integer (a float)"),
    (None, 0, 10, False, "not an integer"),
]


@pytest.mark.parametrize(("value", "low", "high", "accepted", "reason"), INTEGERS, ids=_ids(INTEGERS))
def test_integers(value, low, high, accepted, reason):
    if accepted:
        assert tokens.integer(value, low, high) == value
    else:
        with pytest.raises(TokenError, match=re.escape(reason)):
            tokens.integer(value, low, high)


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("igp", True),
        ("incomplete", True),
        ("IGP", False),
        ("igp ", False),
        ("igp\nshutdown", False),
        ("", False),
        (None, False),
        (["igp"], False),
    ],
)
def test_keywords(value, accepted):
    if accepted:
        assert tokens.keyword(value, tokens.ORIGINS) == value
    else:
        with pytest.raises(TokenError, match="is not one of egp, igp, incomplete"):
            tokens.keyword(value, tokens.ORIGINS)


def test_family_versions():
    assert (tokens.family_version("ipv4"), tokens.family_version("ipv6")) == (4, 6)
    for bad in ("IPv4", "ipv5", "", None):
        with pytest.raises(TokenError):
            tokens.family_version(bad)


def test_shown_is_one_short_line():
    assert tokens.shown("a\nb") == "'a\\nb'"
    assert len(tokens.shown("x" * 1_000_000)) == 80 and tokens.shown("x" * 1_000_000).endswith("...")
    assert tokens.problem(tokens.address, "10.0.0.1") == ""
    assert tokens.problem(tokens.integer, 5, 6, 7) == "is out of range (6-7)"


@given(st.ip_addresses())
def test_every_canonical_address_is_accepted_and_nothing_else(addr):
    text = str(addr)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        assert tokens.problem(tokens.address, text) == "is an IPv4-mapped IPv6 address"
        return
    assert tokens.address(text) == text == tokens.address(text, addr.version)
    assert tokens.problem(tokens.address, text.upper()) in ("", f"is not in canonical form ({text})")
    assert tokens.problem(tokens.address, text + "%0") == "carries a scope id (%...)"


@given(st.ip_addresses(), st.integers(min_value=0, max_value=128))
def test_every_canonical_prefix_is_accepted(addr, length):
    length = min(length, addr.max_prefixlen)
    net = ipaddress.ip_network(f"{addr}/{length}", strict=False)
    if net.version == 6 and net.network_address.ipv4_mapped is not None:
        return
    assert tokens.prefix(net.with_prefixlen) == net.with_prefixlen


@given(st.text(alphabet="0123456789./ :%x\n", max_size=24))
def test_the_fast_path_agrees_with_ipaddress(text):
    """What the IPv4 regex accepts without ipaddress is exactly what the general rule accepts (less scope
    ids, which ipaddress keeps in canonical text and the sink refuses on purpose)."""
    if "%" in text:
        assert tokens.problem(tokens.address, text) and tokens.problem(tokens.prefix, text)
        return
    try:
        canonical = ipaddress.ip_address(text)
        address_ok = str(canonical) == text
    except ValueError:
        address_ok = False
    assert (tokens.problem(tokens.address, text) == "") == address_ok
    try:
        net = ipaddress.ip_network(text)
        prefix_ok = "/" in text and net.with_prefixlen == text
    except ValueError:
        prefix_ok = False
    assert (tokens.problem(tokens.prefix, text) == "") == prefix_ok
