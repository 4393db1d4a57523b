"""The lab topologies with routers and BGPPeers: ``tor`` (AS per rack), ``rr`` (route reflectors), and
``external`` (nodes beside a bare router namespace, for interop with any BGP daemon).

Stage: pure input of the lab tooling, like ``labs.topology`` (which holds the model and the plain mesh);
``labs.catalog`` lists these builders by name. ``labs.containerlab`` renders the same topologies for
containerlab, so every definition here is the single source of both.

Owns: addressing plans, AS numbers, labels and BGPPeer resources of each topology, written the way Calico
users write them (docs/calico-model.md: AS per rack with ``nodeSelector: rack == '<r>'``; reflectors labelled
``route-reflector`` with a cluster id, clients selected by ``!has(route-reflector)``).

Complicating factors:
- AS per rack: the nodes of a rack share one AS, so a node rejects (AS-path loop) the blocks of its rack
  mates that the ToR passes back. Traffic between them follows the ToR's default route, which is also how
  pods leave the rack; every ToR holds every block, so the hairpin through the ToR works.
- Calico adds the reverse of every peerSelector peering, so a reflector peers with every client although
  only the clients' BGPPeer names them; ``Topology.expected_peers`` follows the same rule.
"""

from __future__ import annotations

from labs.topology import (
    DEFAULT_ASN,
    LabNode,
    LabPeer,
    LabPod,
    LabPool,
    LabRouter,
    RouterNeighbor,
    RouterPort,
    Topology,
    validate,
)

POOL = LabPool("default-ipv4-ippool", "192.168.0.0/16")
RACKS = 2
RACK_ASN = 65000  # + rack number: the nodes of rack r share AS 6500r
TOR_ASN = 65100  # + rack number: ToR r runs AS 6510r
FABRIC = "fabric"  # the segment joining the ToRs
RR_LABEL = "route-reflector"
RR_CLUSTER_ID = "224.0.0.1"
EXTERNAL_ROUTER = "peer"


def _node(index: int, address: str, **extra) -> tuple[LabNode, LabPod]:
    name = f"node{index}"
    labels = {"kubernetes.io/hostname": name, **extra.pop("labels", {})}
    node = LabNode(name, address, labels=labels, block=f"192.168.{index}.0/26", **extra)
    return node, LabPod(f"{name}-pod1", name, f"192.168.{index}.2")


def build_tor(nodes: int = 4) -> Topology:
    """Two racks, each an L2 segment behind an FRR ToR with its own AS; nodes peer eBGP with their ToR."""
    if not RACKS <= nodes <= 2 * 200:
        raise ValueError(f"tor needs {RACKS}..400 nodes, not {nodes}")
    lab_nodes, pods, peers, routers = [], [], [], []
    per_rack = [nodes // RACKS + (1 if r < nodes % RACKS else 0) for r in range(RACKS)]
    index = 0
    for r in range(1, RACKS + 1):
        rack, tor_address = f"rack{r}", f"10.0.{r}.1"
        members = []
        for slot in range(per_rack[r - 1]):
            index += 1
            node, pod = _node(
                index, f"10.0.{r}.{11 + slot}/24", asn=RACK_ASN + r, segment=rack, labels={"rack": rack}
            )
            lab_nodes.append(node)
            pods.append(pod)
            members.append(node)
        peers.append(
            LabPeer(
                f"{rack}-tor",
                {"nodeSelector": f"rack == '{rack}'", "peerIP": tor_address, "asNumber": TOR_ASN + r},
            )
        )
        neighbors = [
            RouterNeighbor(n.address, RACK_ASN + r, description=n.name, default_originate=True)
            for n in members
        ]
        neighbors += [
            RouterNeighbor(f"10.0.254.{o}", TOR_ASN + o, description=f"tor{o}")
            for o in range(1, RACKS + 1)
            if o != r
        ]
        ports = (RouterPort(rack, f"{tor_address}/24"), RouterPort(FABRIC, f"10.0.254.{r}/24"))
        routers.append(LabRouter(f"tor{r}", TOR_ASN + r, ports, neighbors=tuple(neighbors)))
    return validate(
        Topology(
            name="tor",
            nodes=tuple(lab_nodes),
            pools=(POOL,),
            bgp_config={"logSeverityScreen": "Info", "nodeToNodeMeshEnabled": False, "asNumber": DEFAULT_ASN},
            peers=tuple(peers),
            pods=tuple(pods),
            routers=tuple(routers),
        )
    )


def build_rr(nodes: int = 4) -> Topology:
    """Two route reflectors (one cluster id) and ``nodes`` clients on one segment, mesh off."""
    if not 1 <= nodes <= 200:
        raise ValueError(f"rr needs 1..200 clients, not {nodes}")
    reflectors = [
        LabNode(
            f"rr{i}",
            f"10.0.0.{i + 1}/24",
            labels={"kubernetes.io/hostname": f"rr{i}", RR_LABEL: "true"},
            rr_cluster_id=RR_CLUSTER_ID,
        )
        for i in (1, 2)
    ]
    clients = [_node(i, f"10.0.0.{10 + i}/24") for i in range(1, nodes + 1)]
    peers = (
        LabPeer(
            "peer-with-route-reflectors",
            {"nodeSelector": f"!has({RR_LABEL})", "peerSelector": f"has({RR_LABEL})"},
        ),
        LabPeer(
            "route-reflector-mesh", {"nodeSelector": f"has({RR_LABEL})", "peerSelector": f"has({RR_LABEL})"}
        ),
    )
    return validate(
        Topology(
            name="rr",
            nodes=tuple(reflectors) + tuple(n for n, _ in clients),
            pools=(POOL,),
            bgp_config={"logSeverityScreen": "Info", "nodeToNodeMeshEnabled": False, "asNumber": DEFAULT_ASN},
            peers=peers,
            pods=tuple(p for _, p in clients),
        )
    )


def build_external(nodes: int = 2) -> Topology:
    """Nodes on one segment (mesh off, no BGPPeers) beside a bare router namespace "peer" at 10.0.0.2:
    start any BGP daemon in it (``ip netns exec``) and add BGPPeers pointing at it."""
    if not 1 <= nodes <= 200:
        raise ValueError(f"external needs 1..200 nodes, not {nodes}")
    members = [_node(i, f"10.0.0.{10 + i}/24") for i in range(1, nodes + 1)]
    router = LabRouter(
        EXTERNAL_ROUTER, 65000, (RouterPort("", "10.0.0.2/24", "fd00::2/64"),), kind="external"
    )
    return validate(
        Topology(
            name="external",
            nodes=tuple(n for n, _ in members),
            pools=(POOL,),
            bgp_config={"logSeverityScreen": "Info", "nodeToNodeMeshEnabled": False, "asNumber": DEFAULT_ASN},
            pods=tuple(p for _, p in members),
            routers=(router,),
        )
    )
