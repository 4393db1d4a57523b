"""BFD on a lab's router sessions: ``calico-bgp lab up tor --bfd``.

Stage: pure input of the lab tooling, applied by ``labs.lab.up(..., bfd=True)`` the way ``labs.ipv6`` is.

Owns: turning a topology with FRR routers into the same topology with BFD on every router-node session:
the router's neighbour entry gets ``bfd`` (FRR starts bfdd; its default is 300 ms x 3, the daemon's too),
and each BGPPeer that points nodes at a router gets Calico's ``failureDetectionMode:
BFDIfDirectlyConnected``.

Complicating factors:
- Single-hop BFD only (RFC 5881): a router is given BFD only towards nodes on one of its own segments, and a
  BGPPeer only when its peer address is a router port on such a segment. Router-to-router sessions (the
  fabric) are left as they are: they are not the nodes' to detect.
- A topology with no FRR router has nothing to switch on here and is refused with the reason, rather than
  coming up without the BFD the user asked for.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from labs.topology import LabPeer, LabRouter, Topology, validate

FAILURE_DETECTION = "BFDIfDirectlyConnected"


def with_bfd(topology: Topology) -> Topology:
    routers = [r for r in topology.routers if r.kind == "frr"]
    if not routers:
        raise ValueError(f"{topology.name}: --bfd needs FRR routers (tor has them); this topology has none")
    node_addresses = {_ip(n.ipv4) for n in topology.nodes}
    ports = {_ip(p.ipv4): p for r in routers for p in r.ports}
    node_nets = [ipaddress.ip_interface(n.ipv4).network for n in topology.nodes]

    def direct(address: str) -> bool:
        return any(ipaddress.ip_address(address) in net for net in node_nets)

    def router_with_bfd(router: LabRouter) -> LabRouter:
        if router.kind != "frr":
            return router
        neighbors = tuple(replace(n, bfd=n.address in node_addresses) for n in router.neighbors)
        return replace(router, neighbors=neighbors)

    def peer_with_bfd(peer: LabPeer) -> LabPeer:
        address = str(peer.spec.get("peerIP", ""))
        if address not in ports or not direct(address):
            return peer
        return replace(peer, spec={**peer.spec, "failureDetectionMode": FAILURE_DETECTION})

    return validate(
        replace(
            topology,
            routers=tuple(router_with_bfd(r) for r in topology.routers),
            peers=tuple(peer_with_bfd(p) for p in topology.peers),
        )
    )


def _ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)
