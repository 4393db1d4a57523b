"""KernelPool: the routes package's own view of an IP pool, and prefix containment helpers.

Stage: input type of the pure calculations ``bgp.export`` and ``routes.resolve``. The daemon translates
``confgen.intent.PoolIntent`` into it, so that routes never imports confgen.

Owns: the pool fields the kernel dataplane needs (encapsulation and export flag), which pools this node
programs into the kernel (BGPConfiguration ``programClusterRoutes``), prefix parsing, and the containment
tests (on integer spans) shared by the export policy, the kernel policy and the BGP policy.

Complicating factors: ``programClusterRoutes`` moved between releases. v3.32 has Enabled (the default: BIRD
programs every IPIP and unencapsulated pool) and Disabled (Felix programs them all). v3.33 adds
EnabledIPIPOnly and EnabledNoEncapOnly and makes the latter the default. We follow v3.32's default
(Enabled) for an absent field, and treat an unknown value like it, as confd does with its own default.
VXLAN pools are Felix's under every setting.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

NEVER = "Never"
ALWAYS = "Always"
CROSS_SUBNET = "CrossSubnet"

# BGPConfiguration.programClusterRoutes values
ENABLED = "Enabled"
DISABLED = "Disabled"
ENABLED_IPIP_ONLY = "EnabledIPIPOnly"
ENABLED_NO_ENCAP_ONLY = "EnabledNoEncapOnly"
# mode -> (we program IPIP pools, we program unencapsulated pools)
_CLUSTER_ROUTES = {
    ENABLED: (True, True),
    DISABLED: (False, False),
    ENABLED_IPIP_ONLY: (True, False),
    ENABLED_NO_ENCAP_ONLY: (False, True),
}


@dataclass(frozen=True, order=True)
class KernelPool:
    cidr: str
    ipip_mode: str = NEVER  # Never | Always | CrossSubnet (IPv4 only)
    vxlan_mode: str = NEVER  # anything but Never: Felix programs the pool, we never do
    disable_bgp_export: bool = False

    @cached_property
    def network(self) -> Network:
        return ipaddress.ip_network(self.cidr, strict=False)

    @property
    def uses_ipip(self) -> bool:
        return self.ipip_mode in (ALWAYS, CROSS_SUBNET) and self.network.version == 4

    @property
    def uses_vxlan(self) -> bool:
        return self.vxlan_mode in (ALWAYS, CROSS_SUBNET)


def programs_pool(pool: KernelPool, program_cluster_routes: str = ENABLED) -> bool:
    """Whether this node (not Felix) installs the kernel routes of ``pool``'s blocks."""
    if pool.uses_vxlan:
        return False
    ipip, no_encap = _CLUSTER_ROUTES.get(program_cluster_routes, _CLUSTER_ROUTES[ENABLED])
    return ipip if pool.uses_ipip else no_encap


def network(cidr: str) -> Network:
    """``ip_network(cidr, strict=False)``. IPv4 strings (every workload /32, so the hot path of a 100k-route
    burst) skip ipaddress's per-octet parser: inet_pton is as strict and ~40 % cheaper overall."""
    addr, slash, length = cidr.partition("/")
    if ":" not in addr and (length.isascii() and length.isdigit() or not slash):
        try:
            packed = socket.inet_pton(socket.AF_INET, addr)
        except OSError:
            pass  # not dotted-quad: ipaddress gives the error message
        else:
            with contextlib.suppress(ValueError):  # a bad length: ipaddress gives the error message
                return ipaddress.IPv4Network((int.from_bytes(packed, "big"), int(length or 32)), strict=False)
    return ipaddress.ip_network(cidr, strict=False)


# Canonical IPv4 prefix lengths as text -> value: one lookup instead of parsing and re-checking the digits.
_V4_LENGTHS = {str(length): length for length in range(33)}


def parse_prefix(cidr: str) -> tuple[str, int, int, int, int]:
    """(canonical CIDR, IP version, first address, prefix length, last address) of ``cidr``, as ``network``
    would give them, without building an ``ipaddress`` object for an IPv4 prefix already in canonical form
    (what ExaBGP and the kernel hand us: the hot path of a 100k-route burst)."""
    addr, _, length = cidr.partition("/")
    plen = _V4_LENGTHS.get(length)  # None for a missing or non-canonical length, and for IPv6's above 32
    if plen is not None and ":" not in addr:
        try:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "big")
        except OSError:
            pass
        else:
            host = (1 << (32 - plen)) - 1
            if not value & host:
                return cidr, 4, value, plen, value | host
    net = network(cidr)
    first = int(net.network_address)
    return net.with_prefixlen, net.version, first, net.prefixlen, int(net.broadcast_address)


# (IP version, first address, last address): containment is two integer comparisons, where ipaddress's
# subnet_of costs microseconds per pair (the export and kernel policies run per route, 100k in a burst).
Span = tuple[int, int, int]


def span(net: Network) -> Span:
    return (net.version, int(net.network_address), int(net.broadcast_address))


def prefix_span(cidr: str) -> Span:
    """``span(network(cidr))`` without the ``ipaddress`` object for a canonical IPv4 prefix."""
    _, version, first, _, last = parse_prefix(cidr)
    return (version, first, last)


def within_any(inner: Span, outers: Iterable[Span]) -> bool:
    """``inner`` lies within one of ``outers`` (same family, equal or more specific)."""
    version, first, last = inner
    for v, lo, hi in outers:  # noqa: SIM110 (a loop, not any() over a generator: half the cost per route)
        if v == version and lo <= first and last <= hi:
            return True
    return False


def sort_key(net: Network) -> tuple[int, int, int]:
    """Numeric order of networks (family, address, length): equal sets always list the same way."""
    return (net.version, int(net.network_address), net.prefixlen)
