"""Addresses and networks from the datastore, parsed strictly into their canonical form.

Stage: the bottom of the pure calculation, used wherever a datastore string becomes an address or a
network: resource fields (``confgen.validate.Reader``), Node addresses, BGPPeer ``peerIP``, service
ranges, filter CIDRs and the block CIDRs in IPAM affinity keys (``confgen.datastore.keys``).

Owns: what counts as an address at the source, and the one-line reason when something does not.

Complicating factors:
- Python's ``ipaddress`` is more lenient than the Go parser Calico validates with: it accepts an IPv6
  scope id of any characters after ``%`` (newlines included) and keeps it in ``str()``, so
  ``"fd00::%x\\nshutdown\\n/112"`` parses as a network whose text carries a command on its own line. Scope
  ids mean nothing in a cluster-wide resource (they name an interface of one host), so they are refused.
- Whitespace and control characters are refused outright rather than stripped: a value that needs
  cleaning was not written by calicoctl, and guessing what it meant is how injection starts.
- IPv4-mapped IPv6 (``::ffff:10.0.0.1``) is refused: Go reads it as the IPv4 address, Python as IPv6,
  so the two families disagree about which session or route it belongs to. The message says to write the
  IPv4 form.
- Non-canonical spellings that are unambiguous (``FD00:0::1``, a network with host bits where the caller
  allows it) are accepted and normalised: the output, never the input, is what travels on.
- Length is bounded before parsing, so a megabyte of digits costs nothing.

>>> canonical_ip("FD00:0::1"), canonical_network("10.65.1.7/26", strict=False)
('fd00::1', '10.65.1.0/26')
>>> address_problem("fe80::1%eth0")
'carries a scope id (%...), which has no meaning outside one host'
"""

from __future__ import annotations

import ipaddress
import re

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# The longest address text is an IPv6 address with an embedded IPv4 tail (45 characters); a prefix adds 4.
MAX_ADDRESS_LENGTH = 45
MAX_NETWORK_LENGTH = MAX_ADDRESS_LENGTH + 4
# Anything an address or a network may contain; everything else is refused before ipaddress sees it.
_ADDRESS_CHARS = re.compile(r"[0-9A-Fa-f:.]+")
_NETWORK_CHARS = re.compile(r"[0-9A-Fa-f:.]+(/[0-9]{1,3})?")


class AddressError(ValueError):
    """Not an address or network we accept; the message is the problem, without the value."""


def _text_problem(value: object, *, network: bool) -> str:
    """Why ``value`` cannot even be handed to the parser ("" = it can). Only reasons a reader could not
    see from the value itself are spelled out; anything else is simply not an address."""
    generic = "is not an IP network" if network else "is not an IP address"
    if not isinstance(value, str):
        return generic
    limit = MAX_NETWORK_LENGTH if network else MAX_ADDRESS_LENGTH
    if len(value) > limit:
        return f"is {len(value)} characters long (at most {limit})"
    if "%" in value:
        return "carries a scope id (%...), which has no meaning outside one host"
    # Whitespace and control characters fail this too: the value's repr in the message shows them.
    if not (_NETWORK_CHARS if network else _ADDRESS_CHARS).fullmatch(value):
        return generic
    return ""


def _mapped_problem(address: Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"is an IPv4-mapped IPv6 address (write {address.ipv4_mapped})"
    return ""


def parse_ip(value: object) -> Address:
    """The address ``value`` spells, or ``AddressError`` saying why it is refused."""
    problem = _text_problem(value, network=False)
    if problem or not isinstance(value, str):
        raise AddressError(problem)
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise AddressError("is not an IP address") from None
    problem = _mapped_problem(address)
    if problem:
        raise AddressError(problem)
    return address


def parse_network(value: object, *, strict: bool = False) -> Network:
    """The network ``value`` spells (a bare address is a /32 or /128). ``strict`` refuses host bits."""
    problem = _text_problem(value, network=True)
    if problem or not isinstance(value, str):
        raise AddressError(problem)
    try:
        network = ipaddress.ip_network(value, strict=strict)
    except ValueError as exc:
        has_host_bits = strict and "host bits set" in str(exc)
        raise AddressError("has host bits set" if has_host_bits else "is not an IP network") from None
    if _mapped_problem(network.network_address):
        raise AddressError("is an IPv4-mapped IPv6 network (write it as an IPv4 network)")
    return network


def parse_interface(value: object) -> Interface:
    """An address with its subnet (``10.0.0.11/24``; a bare address is a /32 or /128)."""
    problem = _text_problem(value, network=True)
    if problem or not isinstance(value, str):
        raise AddressError(problem)
    try:
        interface = ipaddress.ip_interface(value)
    except ValueError:
        raise AddressError("is not an IP address or address/prefix") from None
    problem = _mapped_problem(interface.ip)
    if problem:
        raise AddressError(problem)
    return interface


def canonical_ip(value: object) -> str:
    return str(parse_ip(value))


def canonical_network(value: object, *, strict: bool = False) -> str:
    return parse_network(value, strict=strict).with_prefixlen


def address_problem(value: object) -> str:
    """Why ``value`` is not an acceptable address ("" = it is)."""
    try:
        parse_ip(value)
    except AddressError as exc:
        return str(exc)
    return ""
