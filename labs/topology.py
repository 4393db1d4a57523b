"""Lab topologies: the single description every lab runner (netns today, containerlab later) is built from.

Stage: pure input of the lab tooling. ``labs.lab`` turns a ``Topology`` into namespaces, pods and daemons;
``calico_resources`` turns it into the Calico v3 resources a real cluster would hold in etcd, so the daemons
under test read exactly what calico/node would read.

Owns: the frozen lab model (``Topology``, ``LabNode``, ``LabPool``, ``LabPeer``, ``LabPod``), the plain
mesh builder and the resource encoders. No I/O. The builders are looked up by name in ``labs.catalog``.

Complicating factors:
- Names end up as kernel names. A node's name becomes its switch-port interface in the lan namespace, so it
  must fit IFNAMSIZ (15 characters); node and pod names also become namespace names under one lab prefix,
  so they must not collide with each other or with the switch namespace ("lan").
- Calico's etcd datastore applies no defaults, so the resources spell out what calico/node and calicoctl
  would have written (CIDR form of ``spec.bgp.ipv4Address``, ``blockSize``, ``nodeSelector``).
- A node without an AS of its own inherits the BGPConfiguration's, as calico/node does when no AS is
  configured; ``node_asn`` resolves it for callers that need the effective value.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

from confgen import selector
from confgen.datastore import keys
from confgen.selector import Selector

API_VERSION = "projectcalico.org/v3"
DEFAULT_ASN = 64512  # Calico's default when BGPConfiguration has no asNumber
SWITCH = "lan"  # the name of the L2 switch namespace of every lab
SWITCH_BRIDGE = "br0"  # the bridge inside it, next to one port per node named after the node
RESERVED = {SWITCH, SWITCH_BRIDGE, "lo"}  # node names that would collide in the switch namespace
IFNAMSIZ = 15  # usable characters of a Linux interface name
AFFINITY_CONFIRMED = '{"state":"confirmed","deleted":false}'


@dataclass(frozen=True)
class LabNode:
    name: str
    ipv4: str  # CIDR form, as calico/node writes spec.bgp.ipv4Address: "10.0.0.11/24"
    asn: int | None = None  # None: inherit BGPConfiguration asNumber
    labels: dict[str, str] = field(default_factory=dict)
    block: str = ""  # the IPAM block this node holds a confirmed affinity for, "" for none
    segment: str = ""  # the L2 segment (bridge) its eth0 is cabled to; "" = the lab's default lan
    rr_cluster_id: str = ""  # Node spec.bgp.routeReflectorClusterID: "" unless a route reflector
    routes: tuple[str, ...] = ()  # static routes "<cidr> via <gateway>", e.g. to a subnet behind a router
    ipv6: str = ""  # CIDR form of spec.bgp.ipv6Address ("fd00::11/64"); "" for an IPv4-only node
    block6: str = ""  # the IPv6 IPAM block this node holds a confirmed affinity for, "" for none

    @property
    def address(self) -> str:
        return str(ipaddress.ip_interface(self.ipv4).ip)

    @property
    def address6(self) -> str:
        return str(ipaddress.ip_interface(self.ipv6).ip) if self.ipv6 else ""


@dataclass(frozen=True)
class LabPool:
    name: str
    cidr: str
    ipip_mode: str = "Never"
    vxlan_mode: str = "Never"
    block_size: int = 26
    disable_bgp_export: bool = False


@dataclass(frozen=True)
class LabPeer:
    name: str
    spec: dict[str, object]  # BGPPeer spec, verbatim


@dataclass(frozen=True)
class LabPod:
    name: str  # unique in the lab; also the tail of the pod's namespace name
    node: str
    ipv4: str  # bare address; the pod gets it as a /32, as Calico CNI does
    ipv6: str = ""  # bare address (a /128 in the pod), "" for an IPv4-only pod


@dataclass(frozen=True)
class RouterPort:
    """One interface of a router: eth<i> in its namespace, cabled to a segment's bridge."""

    segment: str  # "" = the default lan
    ipv4: str  # CIDR
    ipv6: str = ""  # CIDR, "" for none


@dataclass(frozen=True)
class RouterNeighbor:
    """A BGP session the router holds (rendered into its FRR config by ``labs.routers``)."""

    address: str
    asn: int
    description: str = ""
    default_originate: bool = False  # send the nodes a default route (a ToR's usual job)
    password: str = ""  # TCP-MD5
    rr_client: bool = False  # the router reflects routes to this (iBGP) neighbour
    bfd: bool = False  # run BFD on the session (FRR's bfdd, its default 300 ms x 3); see labs.bfd


@dataclass(frozen=True)
class LabRouter:
    """A router namespace beside the nodes: a ToR or spine running FRR (kind "frr"), or a bare namespace
    a test starts its own daemon in (kind "external": BIRD, GoBGP, FRR under the interop harness)."""

    name: str
    asn: int
    ports: tuple[RouterPort, ...]
    kind: str = "frr"
    neighbors: tuple[RouterNeighbor, ...] = ()
    networks: tuple[str, ...] = ()  # prefixes it originates (besides any default route)
    routes: tuple[str, ...] = ()  # static routes "<cidr> via <gateway>" (a fabric that knows the pod blocks)

    @property
    def router_id(self) -> str:
        return str(ipaddress.ip_interface(self.ports[0].ipv4).ip)

    def port_ifname(self, index: int) -> str:
        """The switch-side name of port ``index`` (its router-side name is eth<index>)."""
        return f"{self.name}-{index}"


ROUTER_KINDS = ("frr", "external")


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: tuple[LabNode, ...]
    pools: tuple[LabPool, ...] = ()
    bgp_config: dict[str, object] = field(default_factory=dict)  # spec of BGPConfiguration "default"
    peers: tuple[LabPeer, ...] = ()
    pods: tuple[LabPod, ...] = ()
    routers: tuple[LabRouter, ...] = ()

    @property
    def segments(self) -> tuple[str, ...]:
        """Every named L2 segment besides the default lan, in order of first use."""
        used = [n.segment for n in self.nodes] + [p.segment for r in self.routers for p in r.ports]
        return tuple(dict.fromkeys(s for s in used if s))

    @property
    def global_asn(self) -> int:
        return int(self.bgp_config.get("asNumber", DEFAULT_ASN))

    @property
    def mesh_enabled(self) -> bool:
        return bool(self.bgp_config.get("nodeToNodeMeshEnabled", True))

    def node(self, name: str) -> LabNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} in topology {self.name!r}")

    def node_asn(self, name: str) -> int:
        asn = self.node(name).asn
        return self.global_asn if asn is None else asn

    def expected_peers(self, name: str) -> tuple[str, ...]:
        """Peer addresses this node should reach Established with: mesh partners (reflectors are never in
        the mesh), peerIP BGPPeers that apply to it (global, pinned with spec.node, or whose nodeSelector
        matches it), the nodes its peerSelector BGPPeers select, and the reverse peerings Calico adds for
        the nodes that select it."""
        me = self.node(name)
        found = set()
        if self.mesh_enabled and not me.rr_cluster_id:
            found.update(n.address for n in self.nodes if n.address and not n.rr_cluster_id)
        for peer in self.peers:
            if self._peer_applies(peer, me):
                ip = str(peer.spec.get("peerIP", ""))
                if ip:
                    found.add(_peer_host(ip))
                elif "peerSelector" in peer.spec:
                    chosen = _selector(peer.spec["peerSelector"])
                    found.update(n.address for n in self.nodes if chosen.matches(n.labels))
            if peer.spec.get("reversePeering", "Auto") == "Auto" and self._peer_targets(peer, me):
                found.update(n.address for n in self.nodes if self._peer_applies(peer, n))
        found.discard(me.address)
        if me.ipv6:  # node-to-node sessions run per family: over IPv6 too where both ends have an address
            found.update(n.address6 for n in self.nodes if n.ipv6 and n.address in found)
        return tuple(sorted(found, key=_address_order))

    @staticmethod
    def _peer_applies(peer: LabPeer, node: LabNode) -> bool:
        """Whether the BGPPeer's node side (global, spec.node or spec.nodeSelector) selects node."""
        if "nodeSelector" in peer.spec:
            return _selector(peer.spec["nodeSelector"]).matches(node.labels)
        return peer.spec.get("node", node.name) == node.name

    @staticmethod
    def _peer_targets(peer: LabPeer, node: LabNode) -> bool:
        """Whether the BGPPeer's peer side (peerSelector or a peerIP) is node."""
        if "peerSelector" in peer.spec:
            return _selector(peer.spec["peerSelector"]).matches(node.labels)
        return _peer_host(str(peer.spec.get("peerIP", ""))) == node.address


def _selector(text: object) -> Selector:
    return selector.parse(str(text))


def _address_order(address: str) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    ip = ipaddress.ip_address(address)
    return ip.version, ip


def _peer_host(peer_ip: str) -> str:
    """BGPPeer.peerIP without its optional port: "10.0.0.1:1790" and "[fd00::1]:1790" carry one."""
    if peer_ip.startswith("["):
        return peer_ip[1:].split("]", 1)[0]
    return peer_ip.split(":", 1)[0] if peer_ip.count(":") == 1 else peer_ip


def validate(topology: Topology) -> Topology:
    """Reject a topology the lab could not build; returns it unchanged so builders can end with it."""
    names = [n.name for n in topology.nodes] + [p.name for p in topology.pods]
    names += [r.name for r in topology.routers] + list(topology.segments)
    if len(set(names)) != len(names):
        raise ValueError(
            f"{topology.name}: node, pod, router and segment names must be unique: {sorted(names)}"
        )
    if RESERVED & set(names):
        raise ValueError(f"{topology.name}: {sorted(RESERVED & set(names))} reserved by the switch namespace")
    for node in topology.nodes:
        if not node.name or len(node.name) > IFNAMSIZ or not node.name.replace("-", "").isalnum():
            raise ValueError(f"{topology.name}: node name {node.name!r} must be 1-{IFNAMSIZ} of [A-Za-z0-9-]")
        ipaddress.ip_interface(node.ipv4)
    node_names = {n.name for n in topology.nodes}
    addresses = [p.ipv4 for p in topology.pods] + [n.address for n in topology.nodes]
    addresses += [p.ipv6 for p in topology.pods if p.ipv6] + [n.address6 for n in topology.nodes if n.ipv6]
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"{topology.name}: addresses must be unique: {addresses}")
    for pod in topology.pods:
        if pod.node not in node_names:
            raise ValueError(f"{topology.name}: pod {pod.name!r} is on unknown node {pod.node!r}")
        ipaddress.IPv4Address(pod.ipv4)
        if pod.ipv6:
            ipaddress.IPv6Address(pod.ipv6)
    for segment in topology.segments:
        if len(segment) > IFNAMSIZ or not segment.replace("-", "").isalnum():
            raise ValueError(
                f"{topology.name}: segment name {segment!r} must be 1-{IFNAMSIZ} of [A-Za-z0-9-]"
            )
    for router in topology.routers:
        _validate_router(topology.name, router)
    return topology


def _validate_router(lab: str, router: LabRouter) -> None:
    if not router.ports:
        raise ValueError(f"{lab}: router {router.name!r} has no ports")
    # The switch-side port names are "<router>-<index>": they must fit IFNAMSIZ too.
    last_port = router.port_ifname(len(router.ports) - 1)
    if not router.name.replace("-", "").isalnum() or len(last_port) > IFNAMSIZ:
        raise ValueError(f"{lab}: router name {router.name!r} must be short [A-Za-z0-9-] (its ports too)")
    if router.kind not in ROUTER_KINDS:
        raise ValueError(f"{lab}: router {router.name!r}: kind {router.kind!r} is not one of {ROUTER_KINDS}")
    for port in router.ports:
        ipaddress.IPv4Interface(port.ipv4)
        if port.ipv6:
            ipaddress.IPv6Interface(port.ipv6)
    for neighbor in router.neighbors:
        ipaddress.ip_address(neighbor.address)


def build_mesh(nodes: int = 3) -> Topology:
    """Full iBGP mesh on one L2 segment, one unencapsulated pool, one /26 block and two pods per node."""
    lan = ipaddress.IPv4Network("10.0.0.0/24")
    if not 1 <= nodes <= 244:  # .11 .. .254 on the segment, 192.168.<i>.0/26 per node
        raise ValueError(f"mesh needs 1..244 nodes, not {nodes}")
    lab_nodes, pods = [], []
    for i in range(1, nodes + 1):
        name = f"node{i}"
        block = f"192.168.{i}.0/26"
        address = lan.network_address + 10 + i
        lab_nodes.append(
            LabNode(name, f"{address}/{lan.prefixlen}", labels={"kubernetes.io/hostname": name}, block=block)
        )
        pods += [LabPod(f"{name}-pod{j}", name, f"192.168.{i}.{j + 1}") for j in (1, 2)]
    return validate(
        Topology(
            name="mesh",
            nodes=tuple(lab_nodes),
            # Never/Never: the nodes share one L2 segment, and this kernel has no ipip link type anyway.
            pools=(LabPool("default-ipv4-ippool", "192.168.0.0/16"),),
            bgp_config={"logSeverityScreen": "Info", "nodeToNodeMeshEnabled": True, "asNumber": DEFAULT_ASN},
            pods=tuple(pods),
        )
    )


def _resource(kind: str, name: str, spec: dict[str, object], labels: dict[str, str] | None = None) -> str:
    metadata: dict[str, object] = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    body = {"kind": kind, "apiVersion": API_VERSION, "metadata": metadata, "spec": spec}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def bgp_configuration_resource(topology: Topology) -> tuple[str, str]:
    return keys.resource_key("BGPConfiguration", "default"), _resource(
        "BGPConfiguration", "default", dict(topology.bgp_config)
    )


def node_resource(node: LabNode) -> tuple[str, str]:
    bgp: dict[str, object] = {"ipv4Address": node.ipv4}
    if node.asn is not None:
        bgp["asNumber"] = node.asn
    if node.rr_cluster_id:
        bgp["routeReflectorClusterID"] = node.rr_cluster_id
    if node.ipv6:
        bgp["ipv6Address"] = node.ipv6
    return keys.resource_key("Node", node.name), _resource("Node", node.name, {"bgp": bgp}, node.labels)


def ippool_resource(pool: LabPool) -> tuple[str, str]:
    spec = {
        "cidr": pool.cidr,
        "ipipMode": pool.ipip_mode,
        "vxlanMode": pool.vxlan_mode,
        "blockSize": pool.block_size,
        "natOutgoing": False,
        "nodeSelector": "all()",
        "disableBGPExport": pool.disable_bgp_export,
    }
    return keys.resource_key("IPPool", pool.name), _resource("IPPool", pool.name, spec)


def bgppeer_resource(peer: LabPeer) -> tuple[str, str]:
    return keys.resource_key("BGPPeer", peer.name), _resource("BGPPeer", peer.name, dict(peer.spec))


def affinity(node: str, cidr: str) -> tuple[str, str]:
    """A confirmed block affinity, the only IPAM object the BGP layer reads."""
    return keys.affinity_key(node, cidr), AFFINITY_CONFIRMED


def calico_resources(topology: Topology) -> list[tuple[str, str]]:
    """Every (etcd key, value) the lab's datastore starts with, in the order calico/node would create them
    (cluster config first, so no daemon ever sees nodes without the global AS)."""
    items = [bgp_configuration_resource(topology)]
    items += [node_resource(n) for n in topology.nodes]
    items += [ippool_resource(p) for p in topology.pools]
    items += [bgppeer_resource(p) for p in topology.peers]
    items += [affinity(n.name, n.block) for n in topology.nodes if n.block]
    items += [affinity(n.name, n.block6) for n in topology.nodes if n.block6]
    return items
