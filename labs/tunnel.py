"""IPIP in a lab node: ``tunl0`` created the way Felix finds and configures it, or a stand-in for it.

Stage: lab dataplane, beside ``labs.pods`` (Felix's workload side); ``labs.lab`` calls ``ensure_tunl0`` for
every node of a topology with an IPIP pool, and ``labs.ops`` asks ``crosses_stand_in`` which pod pairs the
lab cannot prove reachable.

Owns: the node's ``tunl0`` (up, MTU 1480, the tunnel address Calico IPAM gives the node: the first address
of its block) and the judgement "this path goes through a stand-in".

Complicating factors:
- Where the kernel has the ipip module, every new namespace already holds a ``tunl0`` (the fallback device,
  down); Felix only configures it, and ``ip link add tunl0 type ipip`` answers "File exists". Where the
  module exists but is not loaded, the add creates it. This machine's kernel has no ipip link type at all:
  then a veth end named ``tunl0`` stands in. Routes ``via <node> dev tunl0 onlink`` install on it exactly as
  on the real device (``onlink`` accepts any device), so the BGP layer's programming can be checked by its
  route shape, but packets sent into it go nowhere: pod traffic that crosses it cannot be proven here, and
  needs a kernel with ipip (containerlab on an ordinary host).
- Which pairs cross the tunnel is read from the kernel (``ip route get`` in both nodes), not guessed from
  the topology: CrossSubnet sends same-subnet traffic plainly and only the rest through ``tunl0``.
"""

from __future__ import annotations

import ipaddress
import json

from labs import netns

TUNL0 = "tunl0"
STAND_IN_PEER = "tunl0-peer"  # the other end of the stand-in veth, also inside the node
TUNNEL_MTU = "1480"  # what Felix sets: 1500 minus the 20-byte outer IPv4 header
REAL = "ipip"
STAND_IN = "stand-in"


def ensure_tunl0(ns: str, block: str = "") -> str:
    """Give the node namespace an up ``tunl0``; returns REAL or STAND_IN."""
    kind = REAL
    if not netns.link_exists(ns, TUNL0):
        added = netns.ip(ns, "link", "add", "name", TUNL0, "type", "ipip", check=False)
        if added.returncode != 0:
            if "Unknown device type" not in added.stderr and "not supported" not in added.stderr:
                raise netns.NetnsError(f"ip link add tunl0 type ipip in {ns}: {added.stderr.strip()}")
            netns.ip(ns, "link", "add", TUNL0, "type", "veth", "peer", "name", STAND_IN_PEER)
            netns.link_up(ns, STAND_IN_PEER)
            kind = STAND_IN
    netns.ip(ns, "link", "set", TUNL0, "mtu", TUNNEL_MTU)
    if block:
        # Calico IPAM gives the node's tunnel an address of its own block (ipv4IPIPTunnelAddr).
        address = ipaddress.ip_network(block).network_address
        netns.ip(ns, "address", "replace", f"{address}/32", "dev", TUNL0)
    netns.link_up(ns, TUNL0)
    return kind


def route_device(ns: str, destination: str) -> str:
    """The device the namespace's kernel sends ``destination`` out of ("" if it has no route)."""
    proc = netns.ip(ns, "-j", "route", "get", destination, check=False)
    if proc.returncode != 0:
        return ""
    found = json.loads(proc.stdout or "[]")
    return str(found[0].get("dev", "")) if found else ""


def crosses_stand_in(src_ns: str, src_ip: str, dst_ns: str, dst_ip: str, stand_ins: set[str]) -> bool:
    """Whether traffic between two pods' nodes goes through a stand-in ``tunl0`` in either direction
    (``stand_ins``: the node namespaces whose tunl0 is one)."""
    return (src_ns in stand_ins and route_device(src_ns, dst_ip) == TUNL0) or (
        dst_ns in stand_ins and route_device(dst_ns, src_ip) == TUNL0
    )
