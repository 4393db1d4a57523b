"""KernelPool: the routes package's own view of an IP pool, and prefix containment helpers.

Stage: input type of the pure calculations ``routes.export`` and ``routes.resolve``. The daemon translates
``confgen.intent.PoolIntent`` into it, so that routes never imports confgen.

Owns: the pool fields the kernel dataplane needs (encapsulation and export flag) and the containment
tests on ``ipaddress`` networks, shared by both calculations.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

NEVER = "Never"
ALWAYS = "Always"
CROSS_SUBNET = "CrossSubnet"


@dataclass(frozen=True, order=True)
class KernelPool:
    cidr: str
    ipip_mode: str = NEVER  # Never | Always | CrossSubnet (IPv4 only)
    vxlan_mode: str = NEVER  # anything but Never: Felix programs the pool, we never do
    disable_bgp_export: bool = False

    @cached_property
    def network(self) -> Network:
        return ipaddress.ip_network(self.cidr, strict=False)


def network(cidr: str) -> Network:
    return ipaddress.ip_network(cidr, strict=False)


def inside(net: Network, outer: Network) -> bool:
    """``net`` lies within ``outer`` (same family, equal or more specific)."""
    return net.version == outer.version and net.subnet_of(outer)  # type: ignore[arg-type]


def longest_match(net: Network, pools: Iterable[KernelPool]) -> KernelPool | None:
    """The most specific pool containing ``net``."""
    best: KernelPool | None = None
    for pool in pools:
        if inside(net, pool.network) and (best is None or pool.network.prefixlen > best.network.prefixlen):
            best = pool
    return best
