"""local_exports: which locally originated prefixes this node announces (pure).

Stage: between ``routes.monitor`` (Felix's workload /32s and /128s seen in the kernel) plus the node's
intent (confirmed local blocks, pools), and the announcer in ``bgp``, which diffs the result against what
it has announced.

Owns: Calico's export policy for local routes (calico-bgp.md section 3.5), evaluated in BIRD's order:
1. a prefix inside any ``disable_bgp_export`` pool is never announced, not even a block;
2. each confirmed local block is announced, even with no workload in it (BIRD's static blackhole), and the
   workload host routes inside it are suppressed (``calico_aggr``);
3. a workload host route outside every local block (an IP borrowed from another node's block) is
   announced when it lies inside an exportable pool; anything outside every pool is not.

Complicating factors: CIDRs arrive as strings from two sources (kernel and datastore) and are compared as
``ipaddress`` networks; the output is sorted numerically (family, address, length), not as text, so equal
inputs always give the same tuple and the announcer's diff stays quiet.
"""

from __future__ import annotations

from collections.abc import Iterable

from routes.pools import KernelPool, Network, inside, network


def sort_key(net: Network) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


def local_exports(
    workload_prefixes: Iterable[str], local_blocks: Iterable[str], pools: Iterable[KernelPool]
) -> tuple[str, ...]:
    pools = tuple(pools)
    suppressed = [p.network for p in pools if p.disable_bgp_export]
    exportable = [p.network for p in pools if not p.disable_bgp_export]
    blocks = {network(b) for b in local_blocks}
    out: set[Network] = {b for b in blocks if not any(inside(b, s) for s in suppressed)}
    for prefix in workload_prefixes:
        net = network(prefix)
        if any(inside(net, b) for b in blocks) or any(inside(net, s) for s in suppressed):
            continue
        if any(inside(net, e) for e in exportable):
            out.add(net)
    return tuple(n.with_prefixlen for n in sorted(out, key=sort_key))
