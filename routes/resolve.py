"""kernel_routes: the routes this node should hold in the kernel, from what BGP learned (pure).

Stage: between the BGP layer's Adj-RIB-In (best / multipath next hops per prefix, selected by the caller)
and ``routes.table.RouteTable``.

Owns: Calico's kernel programming policy (BIRD's ``calico_kernel_programming`` filter and static
protocol, calico-bgp.md sections 3.2 and 3.4), per prefix:
- a blackhole (proto 12) for each confirmed local block, so traffic for unallocated addresses in our
  blocks is dropped here instead of looping to the default route; a learned route equal to a local block
  is ignored (our own block reflected back), while learned /32s inside it (IPs borrowed by other nodes,
  calico#3246) are installed as more specific routes;
- nothing for prefixes inside a reject CIDR (service ranges: kube-proxy owns them) or a VXLAN pool
  (Felix programs those);
- the pool found by longest match picks the encapsulation: IPIP Always goes ``via <gw> dev tunl0
  onlink`` with the original BGP next hop, IPIP CrossSubnet does so only for next hops outside the node's
  subnet; no-encap pools and prefixes outside every pool (a ToR's default route) get a plain ``via <gw>``
  and the kernel resolves the device.
- several next hops become one ECMP route with sorted, de-duplicated next hops (BIRD's ``merge paths``).

Complicating factors: IPIP exists for IPv4 only, so IPv6 prefixes always go plain; next hops of the
other family (which a plain kernel route cannot use) are dropped; /32 (/128) blocks get no blackhole,
as in BIRD's static protocol.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from routes.export import sort_key
from routes.model import BLACKHOLE, RTPROT_BIRD, Nexthop, Route
from routes.pools import ALWAYS, CROSS_SUBNET, NEVER, KernelPool, Network, inside, longest_match, network

TUNNEL_DEVICE = "tunl0"


def kernel_routes(
    learned: Mapping[str, Sequence[str]],
    local_blocks: Iterable[str],
    pools: Iterable[KernelPool],
    node_network: str = "",
    *,
    reject_cidrs: Iterable[str] = (),
) -> list[Route]:
    pools = tuple(pools)
    rejects = [network(c) for c in reject_cidrs]
    subnet = network(node_network) if node_network else None

    def excluded(net: Network, pool: KernelPool | None) -> bool:
        return any(inside(net, r) for r in rejects) or (pool is not None and pool.vxlan_mode != NEVER)

    wanted: dict[Network, Route] = {}
    blocks = {network(b) for b in local_blocks}
    for block in blocks:
        if block.prefixlen != block.max_prefixlen and not excluded(block, longest_match(block, pools)):
            wanted[block] = Route(block.with_prefixlen, BLACKHOLE, proto=RTPROT_BIRD)
    for prefix, gateways in learned.items():
        net = network(prefix)
        pool = longest_match(net, pools)
        if net in blocks or excluded(net, pool):
            continue
        same_family = (gw for gw in gateways if ipaddress.ip_address(gw).version == net.version)
        hops = {_nexthop(gw, pool, subnet) for gw in same_family}
        if hops:
            wanted[net] = Route(net.with_prefixlen, nexthops=tuple(sorted(hops)), proto=RTPROT_BIRD)
    return [wanted[n] for n in sorted(wanted, key=sort_key)]


def _nexthop(gateway: str, pool: KernelPool | None, subnet: Network | None) -> Nexthop:
    gw = ipaddress.ip_address(gateway)
    mode = pool.ipip_mode if pool is not None and gw.version == 4 else NEVER
    on_subnet = subnet is not None and inside(network(gateway), subnet)
    if mode == ALWAYS or (mode == CROSS_SUBNET and not on_subnet):
        return Nexthop(gw.compressed, TUNNEL_DEVICE, onlink=True)
    return Nexthop(gw.compressed)
