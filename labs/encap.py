"""IPIP lab topologies: ``ipip`` (a mesh whose pool is IPIP Always) and ``crosssubnet`` (two subnets joined
by a router, pool IPIP CrossSubnet).

Stage: pure input of the lab tooling, listed in ``labs.catalog.TOPOLOGIES``; ``labs.lab`` gives every
node of a topology with an IPIP pool a ``tunl0`` (``labs.tunnel``).

Owns: the address plans. ``crosssubnet``: nodes 1..k on the default segment 10.0.0.0/24 and the rest on
segment ``subnet2`` 10.0.1.0/24, router ``gw`` (10.0.0.1, 10.0.1.1, forwarding) between them; each node
reaches the other subnet through ``gw`` by a static route, as a host on a routed fabric would. The router
also holds static routes to every node's blocks: the L3 fabric of a cluster that advertises pod routes (or
a ToR that learned them), so unencapsulated traffic crosses it too. That is what IPv6 uses (``--ipv6``: no
IPIP for IPv6), and it exercises recursive next-hop resolution: a node's IPv6 next hop in the other subnet is
not on a connected network, so its routes go ``via`` the router.

Complicating factors: what each lab can prove depends on the kernel (``labs.tunnel``). With a stand-in
``tunl0`` the IPv4 route shapes are right (``via <node> dev tunl0 onlink`` across subnets, plain ``via``
within one) but traffic through the tunnel goes nowhere; ``lab up`` reports those pairs as not provable.
"""

from __future__ import annotations

from labs.topology import DEFAULT_ASN, LabNode, LabPod, LabPool, LabRouter, RouterPort, Topology, validate

BGP_CONFIG = {"logSeverityScreen": "Info", "nodeToNodeMeshEnabled": True, "asNumber": DEFAULT_ASN}
SUBNETS = (("", "10.0.0"), ("subnet2", "10.0.1"))  # (segment, /24 prefix); "" is the default lan
ROUTER = "gw"


def _pool(mode: str) -> LabPool:
    return LabPool("default-ipv4-ippool", "192.168.0.0/16", ipip_mode=mode)


def _node(index: int, address: str, **extra) -> tuple[LabNode, tuple[LabPod, ...]]:
    name = f"node{index}"
    node = LabNode(name, address, labels={"kubernetes.io/hostname": name}, block=f"192.168.{index}.0/26",
                   **extra)
    return node, tuple(LabPod(f"{name}-pod{j}", name, f"192.168.{index}.{j + 1}") for j in (1, 2))


def build_ipip(nodes: int = 3) -> Topology:
    """The mesh with an IPIP Always pool: every remote block goes ``via <node> dev tunl0 onlink``."""
    if not 1 <= nodes <= 200:
        raise ValueError(f"ipip needs 1..200 nodes, not {nodes}")
    members = [_node(i, f"10.0.0.{10 + i}/24") for i in range(1, nodes + 1)]
    return validate(
        Topology(
            name="ipip",
            nodes=tuple(n for n, _ in members),
            pools=(_pool("Always"),),
            bgp_config=dict(BGP_CONFIG),
            pods=tuple(p for _, pods in members for p in pods),
        )
    )


def build_crosssubnet(nodes: int = 4) -> Topology:
    """Nodes in two subnets, IPIP CrossSubnet: plain routes within a subnet, tunl0 onlink across."""
    if not 2 <= nodes <= 200:
        raise ValueError(f"crosssubnet needs 2..200 nodes, not {nodes}")
    first = (nodes + 1) // 2
    members = []
    for i in range(1, nodes + 1):
        mine, other = (SUBNETS[0], SUBNETS[1]) if i <= first else (SUBNETS[1], SUBNETS[0])
        host = 10 + i
        route = f"{other[1]}.0/24 via {mine[1]}.1"
        members.append(_node(i, f"{mine[1]}.{host}/24", segment=mine[0], routes=(route,)))
    router = LabRouter(
        ROUTER,
        DEFAULT_ASN,
        tuple(RouterPort(segment, f"{prefix}.1/24") for segment, prefix in SUBNETS),
        kind="external",
        routes=tuple(f"{n.block} via {n.address}" for n, _ in members),
    )
    return validate(
        Topology(
            name="crosssubnet",
            nodes=tuple(n for n, _ in members),
            pools=(_pool("CrossSubnet"),),
            bgp_config=dict(BGP_CONFIG),
            pods=tuple(p for _, pods in members for p in pods),
            routers=(router,),
        )
    )
