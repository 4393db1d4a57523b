"""kernel_routes: the routes this node should hold in the kernel, from what BGP learned (pure).

Stage: between the BGP layer's Loc-RIB (best / multipath next hops per prefix, selected by the caller)
and ``routes.table.RouteTable``.

Owns: Calico's kernel programming policy (BIRD's ``calico_kernel_programming`` filter, static protocol and
kernel protocol, docs/kernel-contract.md), per prefix:
- a blackhole for each confirmed local block of a pool we program, so traffic for unallocated addresses
  in our blocks is dropped here instead of looping to the default route; a learned route equal to a local
  block is ignored (our own block reflected back), while learned /32s inside it (IPs borrowed by other
  nodes, calico#3246) are installed as more specific routes;
- nothing for prefixes inside a reject CIDR (service ranges: kube-proxy owns them), a VXLAN pool (Felix
  programs those), or a pool that ``programClusterRoutes`` leaves to Felix (``routes.pools.programs_pool``);
- the pool found by longest match picks the encapsulation: IPIP Always goes ``via <gw> dev tunl0 onlink``
  with the original BGP next hop, IPIP CrossSubnet does so only for next hops outside the node's subnet;
  no-encap pools and prefixes outside every pool (a ToR's default route, rack prefixes) get a plain
  ``via <gw>``. With a ``resolve`` function (``routes.recursive.NexthopResolver.resolve``), a plain next hop
  that is not directly reachable is replaced by the gateway the kernel uses to reach it (``gateway
  recursive``); tunnel next hops are never resolved (BIRD's ``krt_tunnel`` uses the original next hop).
- several next hops become one ECMP route with sorted, de-duplicated next hops (BIRD's ``merge paths``).
- the metric is Calico v3.32's: ``2^31-1 - local_pref`` (``bgp_metric``). Calico nodes export their own
  routes with local-pref ``2^31-1 - 1024``, so a normal-priority route lands at metric 1024 (Felix's
  IPv4/IPv6NormalRoutePriority) and a live-migration route announced at priority 512 lands at 512. A path
  without local-pref (eBGP) gets BIRD's default of 100 first. Local-block blackholes come from BIRD's static
  protocol, which sets no metric: 0 (IPv6 stores that as 1024).

Complicating factors: IPIP exists for IPv4 only, so IPv6 prefixes always go plain; next hops of the
other family (which a plain kernel route cannot use) are dropped; /32 (/128) blocks get no blackhole,
as in BIRD's static protocol.
It runs once per speaker flush, for one route as often as for 100k, so what depends only on the intent
(pool spans, rejects, the node's subnet, the blocks' blackholes) is worked out once per distinct set of
those arguments and kept (the last ``SETTINGS``), not on every call.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from routes.model import BLACKHOLE, RTPROT_BIRD, Nexthop, Route
from routes.pools import (
    ALWAYS,
    CROSS_SUBNET,
    ENABLED,
    KernelPool,
    Network,
    Span,
    network,
    parse_prefix,
    programs_pool,
    sort_key,
    span,
    within_any,
)

TUNNEL_DEVICE = "tunl0"
BIRD_INT_MAX = 2**31 - 1  # Calico's encoding of route priority in local-pref: priority = this - local_pref
DEFAULT_LOCAL_PREF = 100  # what BIRD attaches to a path received without local-pref (eBGP)

Resolve = Callable[[str], tuple[Nexthop, ...]]

__all__ = ["KernelPool", "Learned", "bgp_metric", "kernel_routes"]


@dataclass(frozen=True, slots=True)
class Learned:
    """The selected paths of one prefix: the next hops of the multipath set and the best path's local-pref."""

    nexthops: tuple[str, ...]
    local_pref: int | None = None


# Cached for the objects as much as the arithmetic: a metric near 2^31 is a new 32-byte int per route
# otherwise, and every route with the same local preference can hold the same one.
@functools.lru_cache(maxsize=256)
def bgp_metric(local_pref: int | None) -> int:
    """The kernel metric Calico v3.32 gives a BGP-learned route (``krt_metric = 2^31-1 - bgp_local_pref``)."""
    pref = DEFAULT_LOCAL_PREF if local_pref is None else local_pref
    return min(max(BIRD_INT_MAX - pref, 0), 0xFFFFFFFF)


SETTINGS = 8  # distinct (pools, blocks, subnet, rejects, mode) kept: one per intent, the last few intents


@dataclass(frozen=True, slots=True)
class _Setting:
    """What ``kernel_routes`` works out from its per-intent arguments: the same for every call until the
    intent changes, and most of the cost of a call that carries one route."""

    pool_spans: tuple[tuple[Span, KernelPool], ...]  # most specific first
    rejects: tuple[Span, ...]
    subnet: Network | None
    programmed: Mapping[int, bool]  # id of a pool in pool_spans (held there, so the id stays its own)
    blackholes: tuple[tuple[tuple[int, int, int], Route], ...]  # sort key -> a local block's blackhole
    block_spans: frozenset[Span]


@functools.lru_cache(maxsize=SETTINGS)
def _setting(
    pools: tuple[KernelPool, ...],
    local_blocks: tuple[str, ...],
    node_network: str,
    reject_cidrs: tuple[str, ...],
    program_cluster_routes: str,
) -> _Setting:
    by_specificity = sorted(pools, key=lambda p: -p.network.prefixlen)  # stable: ties keep pool order
    pool_spans = tuple((span(p.network), p) for p in by_specificity)
    rejects = tuple(span(network(c)) for c in reject_cidrs)
    programmed = {id(p): programs_pool(p, program_cluster_routes) for _, p in pool_spans}
    blocks = {network(b) for b in local_blocks}
    blackholes = []
    for block in blocks:
        s = span(block)
        if block.prefixlen == block.max_prefixlen or within_any(s, rejects):
            continue
        pool = _pool_of(s, pool_spans)
        if pool is None or programmed[id(pool)]:
            blackholes.append((sort_key(block), Route(block.with_prefixlen, BLACKHOLE, proto=RTPROT_BIRD)))
    subnet = network(node_network) if node_network else None
    block_spans = frozenset(span(b) for b in blocks)
    return _Setting(pool_spans, rejects, subnet, programmed, tuple(blackholes), block_spans)


# Next hops as address objects, parsed once: a one-route flush would otherwise parse its next hop anew each
# time. Bounded; an address is immutable, and a text that is not one raises (uncached) every time.
_address = functools.lru_cache(maxsize=1024)(ipaddress.ip_address)


def _pool_of(s: Span, pool_spans: tuple[tuple[Span, KernelPool], ...]) -> KernelPool | None:
    version, first, last = s
    for (v, lo, hi), pool in pool_spans:
        if v == version and lo <= first and last <= hi:
            return pool
    return None


def kernel_routes(
    learned: Mapping[str, Sequence[str] | Learned],
    local_blocks: Iterable[str],
    pools: Iterable[KernelPool],
    node_network: str = "",
    *,
    reject_cidrs: Iterable[str] = (),
    program_cluster_routes: str = ENABLED,
    resolve: Resolve | None = None,
) -> list[Route]:
    # The hot path of a 100k-route burst: pools, blocks and rejects become integer spans once per intent
    # (``_setting``, which is also most of a one-route call), each prefix is parsed once, and the next hops
    # of a (next hops, pool) pair are worked out once per call.
    setting = _setting(
        tuple(pools), tuple(local_blocks), node_network, tuple(reject_cidrs), program_cluster_routes
    )
    pool_spans, rejects, subnet = setting.pool_spans, setting.rejects, setting.subnet
    programmed = setting.programmed
    resolved: dict[str, tuple[Nexthop, ...]] = {}  # per call: one lookup per distinct next hop
    hops_of: dict[tuple[tuple[str, ...], int, int], tuple[Nexthop, ...]] = {}

    def excluded(s: Span, pool: KernelPool | None) -> bool:
        if within_any(s, rejects):
            return True
        return pool is not None and not programmed[id(pool)]

    def plain(gateway: str) -> tuple[Nexthop, ...]:
        if resolve is None:
            return (Nexthop(gateway),)
        if gateway not in resolved:
            resolved[gateway] = resolve(gateway)
        return resolved[gateway]

    def hops_for(nexthops: tuple[str, ...], version: int, pool: KernelPool | None) -> tuple[Nexthop, ...]:
        key = (nexthops, version, id(pool))
        hops = hops_of.get(key)
        if hops is None:
            found: set[Nexthop] = set()
            for gw in nexthops:
                try:
                    addr = _address(gw)
                except ValueError:
                    continue  # not a next hop: this route gets none from it (and none at all if it is alone)
                if addr.version != version:
                    continue
                if _tunnelled(addr, pool, subnet):
                    found.add(Nexthop(addr.compressed, TUNNEL_DEVICE, onlink=True))
                else:
                    found.update(plain(addr.compressed))
            hops = hops_of[key] = tuple(sorted(found))
        return hops

    wanted: dict[tuple[int, int, int], Route] = dict(setting.blackholes)  # sort key (family, address, length)
    block_spans = setting.block_spans
    for prefix, paths in learned.items():
        dst, version, first, length, last = parse_prefix(prefix)
        s = (version, first, last)
        if s in block_spans:
            continue
        pool = _pool_of(s, pool_spans)
        if excluded(s, pool):
            continue
        if not isinstance(paths, Learned):
            paths = Learned(tuple(paths))
        hops = hops_for(tuple(paths.nexthops), version, pool)
        if hops:
            wanted[(version, first, length)] = Route(
                dst, nexthops=hops, proto=RTPROT_BIRD, priority=bgp_metric(paths.local_pref)
            )
    return [wanted[k] for k in sorted(wanted)]


def _tunnelled(gw: ipaddress.IPv4Address | ipaddress.IPv6Address, pool: KernelPool | None,
               subnet: Network | None) -> bool:
    if pool is None or gw.version != 4 or not pool.uses_ipip:
        return False
    if pool.ipip_mode == ALWAYS:
        return True
    on_subnet = subnet is not None and subnet.version == 4 and gw in subnet
    return pool.ipip_mode == CROSS_SUBNET and not on_subnet
