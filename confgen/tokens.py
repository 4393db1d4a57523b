"""Tokens the sinks may emit: addresses, prefixes, integers and keywords, checked against their grammar.

Stage: the last step before text leaves the daemon. The three sinks, the ExaBGP config renderer
(``confgen.render``), the ExaBGP API command builder (``bgp.exabgp.commands``) and the nftables script
writer (``bgp.gtsm``), pass every value they interpolate through these checks, whatever validated it
upstream: a sink that trusts its input is one parser bug away from injection.

Owns: the sink grammar of a value, and the one-line reason a value is refused. Pure.

Complicating factors:
- The sink grammar is narrower than the source's. The source (``confgen.addresses``) normalises
  unambiguous spellings; a sink accepts only the canonical text (``str(ip_address(x)) == x``), because a
  value that still needs normalising here did not come through the source and nothing about it is known.
- Python's ``ipaddress`` accepts an IPv6 scope id of any characters after ``%`` (a newline included) and
  keeps it in ``str()``, so "parses as an address" proves nothing about the text. Scope ids, whitespace
  and control characters are refused before parsing, and the length is bounded first.
- IPv4-mapped IPv6 (``::ffff:a.b.c.d``) is refused: peers, ExaBGP and the kernel disagree about which
  family it belongs to.
- ``int`` subclasses are refused (``bool`` is one, and ``str(True)`` is not a number), and so is
  anything that merely converts to an int.
- The API command builder runs this for every prefix of a 100k-route burst: a canonical IPv4 address or
  /32, what almost every token is, is recognised by one precompiled regex without building an
  ``ipaddress`` object.
- Messages show values through ``shown``: a repr (so a newline cannot start a second log line) cut to a
  readable length (a 1 MB value is not logged whole).

>>> address("fd00::1"), prefix("10.65.1.0/26"), integer(179, 1, 65535), keyword("igp", ORIGINS)
('fd00::1', '10.65.1.0/26', 179, 'igp')
>>> problem(address, "fd00::1%eth0\\nshutdown")
'carries a scope id (%...)'
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection

from confgen import addresses

# The same length bounds as the source parser (the longest address text is 45 characters).
MAX_ADDRESS_LENGTH = addresses.MAX_ADDRESS_LENGTH
MAX_PREFIX_LENGTH = addresses.MAX_NETWORK_LENGTH
MAX_UINT32 = 2**32 - 1
MAX_UINT16 = 2**16 - 1

ORIGINS = frozenset({"igp", "egp", "incomplete"})
FAMILIES = {"ipv4": 4, "ipv6": 6}

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# Canonical IPv4 text: no leading zeros, ASCII digits only (``\d`` would take any Unicode digit).
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_IPV4_HOST = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}/32")
# Whitespace, control characters (C0, DEL, C1) and the scope-id marker: refused with a reason of their own.
_WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


class TokenError(ValueError):
    """A value outside the grammar of its token; the message is the problem, without the value."""


def shown(value: object, limit: int = 80) -> str:
    """``value`` for a message: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def problem(check: Callable[..., object], value: object, *args: object) -> str:
    """Why ``check(value, *args)`` refuses ``value`` ("" = it does not)."""
    try:
        check(value, *args)
    except TokenError as exc:
        return str(exc)
    return ""


def _text(value: object, what: str, limit: int) -> str:
    if type(value) is not str:
        raise TokenError(f"is not {what} (a {type(value).__name__}, not text)")
    if len(value) > limit:
        raise TokenError(f"is {len(value)} characters long (at most {limit})")
    if "%" in value:
        raise TokenError("carries a scope id (%...)")
    if _WHITESPACE_OR_CONTROL.search(value):
        raise TokenError("contains whitespace or a control character")
    return value


def _family(parsed: ipaddress.IPv4Address | ipaddress.IPv6Address, version: int | None) -> None:
    if version is not None and parsed.version != version:
        raise TokenError(f"is not an IPv{version} address")
    if parsed.version == 6 and parsed.ipv4_mapped is not None:
        raise TokenError("is an IPv4-mapped IPv6 address")


def address(value: object, version: int | None = None) -> str:
    """``value`` if it is an IP address in canonical text (of IP ``version`` when given)."""
    if type(value) is str and version != 6 and _IPV4.fullmatch(value):
        return value
    text = _text(value, "an IP address", MAX_ADDRESS_LENGTH)
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        raise TokenError("is not an IP address") from None
    _family(parsed, version)
    if str(parsed) != text:
        raise TokenError(f"is not in canonical form ({parsed})")
    return text


def prefix(value: object, version: int | None = None) -> str:
    """``value`` if it is an IP prefix in canonical text: no host bits, a prefix length, lower case."""
    if type(value) is str and version != 6 and _IPV4_HOST.fullmatch(value):
        return value
    text = _text(value, "an IP prefix", MAX_PREFIX_LENGTH)
    addr, slash, length = text.partition("/")
    if not slash:
        raise TokenError("has no prefix length")
    try:
        parsed = ipaddress.ip_network(text, strict=False)
        first = ipaddress.ip_address(addr)
    except ValueError:
        raise TokenError("is not an IP prefix") from None
    if parsed.network_address != first:
        raise TokenError(f"has host bits set ({parsed.with_prefixlen})")
    _family(parsed.network_address, version)
    if parsed.with_prefixlen != text:
        raise TokenError(f"is not in canonical form ({parsed.with_prefixlen})")
    return text


def integer(value: object, low: int, high: int) -> int:
    """``value`` if it is an int (not a bool, not a string of digits) in ``low..high``."""
    if type(value) is not int:
        raise TokenError(f"is not an integer (a {type(value).__name__})")
    if not low <= value <= high:
        raise TokenError(f"is out of range ({low}-{high})")
    return value


def keyword(value: object, allowed: Collection[str]) -> str:
    """``value`` if it is one of ``allowed``."""
    if type(value) is not str or value not in allowed:
        raise TokenError(f"is not one of {', '.join(sorted(allowed))}")
    return value


def family_version(family: object) -> int:
    """4 or 6 for the address family keyword ``ipv4`` / ``ipv6``."""
    return FAMILIES[keyword(family, FAMILIES)]
