"""Dual-stack labs: ``with_ipv6`` gives any lab topology an IPv6 address plan beside its IPv4 one.

Stage: pure input of the lab tooling, applied by ``labs.lab.up(..., ipv6=True)`` (``calico-bgp lab up mesh
--ipv6``) on top of any builder in ``labs.catalog.TOPOLOGIES``.

Owns: the mapping from the IPv4 plan to the IPv6 one, so that every lab keeps one address plan that a reader
can translate in their head:
- a node (or router port) at 10.0.c.d/N gets fd00:0:0:c::d/64, the digits of d kept as written (10.0.0.11
  -> fd00::11), so each IPv4 subnet has its own /64;
- the IPv6 pool is fd00:10::/48 with Calico's default /122 blocks; the block 192.168.x.y/26 becomes
  fd00:10:0:x::y/122 and a pod at 192.168.x.z gets fd00:10:0:x::z (z as a number: the /26 and the /122
  both hold 64 addresses, so a pod stays inside its node's block);
- static routes are mapped the same way.

Complicating factors: FRR routers here are configured for IPv4 sessions only, so a topology with one is
refused rather than half dual-stack; a bare router namespace (kind "external") just gets its addresses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from labs.topology import LabPool, Topology, validate

POOL6 = LabPool("default-ipv6-ippool", "fd00:10::/48", block_size=122)
NODE_PREFIX = 64


def node_ipv6(ipv4_cidr: str) -> str:
    """10.0.c.d/N -> fd00:0:0:c::d/64 (d's digits kept, so 10.0.0.11 reads fd00::11)."""
    a, b, c, d = str(ipaddress.ip_interface(ipv4_cidr).ip).split(".")
    return f"{ipaddress.IPv6Address(f'fd00:0:{int(b):x}:{int(c):x}::{d}')}/{NODE_PREFIX}"


def pod_ipv6(ipv4: str) -> str:
    """192.168.x.z -> fd00:10:0:x::z, z taken as a number."""
    _, _, x, z = ipv4.split(".")
    return str(ipaddress.IPv6Address(f"fd00:10:0:{int(x):x}::") + int(z))


def block_ipv6(block: str) -> str:
    """192.168.x.y/p -> fd00:10:0:x::y/(128 - (32 - p)): the same number of addresses."""
    net = ipaddress.IPv4Network(block)
    return f"{pod_ipv6(str(net.network_address))}/{128 - (32 - net.prefixlen)}"


def route_ipv6(spec: str) -> str:
    """A static route "<cidr> via <gateway>" of the IPv4 plan, in the IPv6 plan."""
    cidr, via, gateway = spec.split()
    net = ipaddress.IPv4Network(cidr)
    if net.subnet_of(ipaddress.IPv4Network("192.168.0.0/16")):
        dst = block_ipv6(cidr)
    else:
        dst = str(ipaddress.ip_interface(node_ipv6(f"{net.network_address}/{net.prefixlen}")).network)
    return f"{dst} {via} {ipaddress.ip_interface(node_ipv6(gateway)).ip}"


def with_ipv6(topology: Topology) -> Topology:
    frr = [r.name for r in topology.routers if r.kind == "frr"]
    if frr:
        raise ValueError(f"{topology.name}: IPv6 is not available with FRR routers ({', '.join(frr)})")
    nodes = tuple(
        replace(
            n,
            ipv6=n.ipv6 or node_ipv6(n.ipv4),
            block6=n.block6 or (block_ipv6(n.block) if n.block else ""),
            routes=n.routes + tuple(route_ipv6(r) for r in n.routes),
        )
        for n in topology.nodes
    )
    pods = tuple(replace(p, ipv6=p.ipv6 or pod_ipv6(p.ipv4)) for p in topology.pods)
    routers = tuple(
        replace(
            r,
            ports=tuple(replace(p, ipv6=p.ipv6 or node_ipv6(p.ipv4)) for p in r.ports),
            routes=r.routes + tuple(route_ipv6(s) for s in r.routes),
        )
        for r in topology.routers
    )
    pools = topology.pools + ((POOL6,) if POOL6 not in topology.pools else ())
    return validate(replace(topology, nodes=nodes, pods=pods, routers=routers, pools=pools))
