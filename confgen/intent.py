"""The node's BGP intent: what confgen computes and every dataplane consumes.

Stage: output of the pure calculation (``confgen.calc.intent_for``), input of the three dataplanes — the
rendered ExaBGP config (``confgen.render``), the announcements (``bgp.speaker``) and the kernel routes
(``routes.resolve``, through ``bgp.daemon`` which translates pools into the routes package's own types).

Owns: plain frozen value types, nothing else. Equality matters: the daemon compares the new intent with the
previous one to decide whether anything downstream has to move, so every field is hashable and ordered
deterministically (sorted tuples, never sets or dicts).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from confgen.bgpfilter import BGPFilter

# Peer types, spelled as `calicoctl node status` prints them.
MESH = "node-to-node mesh"
GLOBAL = "global"
NODE_SPECIFIC = "node specific"

# PeerIntent.next_hop_mode values (BGPPeer nextHopMode; keepOriginalNextHop on eBGP is folded into KEEP).
NEXT_HOP_AUTO = "Auto"
NEXT_HOP_SELF = "Self"
NEXT_HOP_KEEP = "Keep"

DEFAULT_RESTART_TIME = 120  # BIRD's graceful-restart time, which every Calico session template enables
# restartMode LongLivedGracefulRestart without maxRestartTime: Calico Enterprise's long-lived stale time.
DEFAULT_LLGR_STALE_TIME = 3600


@dataclass(frozen=True, order=True)
class PeerIntent:
    """One BGP session this node should hold (one per address family)."""

    name: str  # Calico's protocol name: Mesh_10_0_0_12, Global_10_0_0_1_port_1790, Node_...
    address: str  # peer IP, bare
    family: str  # "ipv4" | "ipv6"
    peer_as: int
    local_as: int
    local_address: str  # our source address for this session
    kind: str = MESH  # MESH | GLOBAL | NODE_SPECIFIC
    port: int = 179  # the peer's port we connect to
    passive: bool = False
    calico_node: str = ""  # name of the Calico node behind the address, "" for external peers
    hold_time: int = 90
    # Already resolved and validated by confgen. Kept out of repr: an intent or a peer shown in a log line or
    # an exception message must not carry the key.
    password: str = field(default="", repr=False)
    # --- optional settings (the defaults are Calico's) ---
    restart_time: int = DEFAULT_RESTART_TIME  # graceful-restart time we advertise (s); 0 = no GR capability
    keepalive_time: int = 0  # BGPPeer keepaliveTime (s); 0 = not set (hold_time / 3 applies)
    # Long-lived graceful restart (RFC 9494), receive side only (bgp.graceful): how long a peer's paths stay
    # LLGR-stale after its graceful restart ends (s); 0 = restartMode GracefulRestart, no long-lived phase.
    llgr_stale_time: int = 0
    ttl_security: int = 0  # GTSM hop count (RFC 5082); 0 = off. Enforced by bgp.gtsm (nftables), not ExaBGP
    # BGPPeer failureDetectionMode BFDIfDirectlyConnected (or the mesh's switch): BFD wanted, if the peer
    # turns out to be on a connected subnet (the daemon knows its interfaces; bgp.bfd.gate decides).
    bfd: bool = False
    source_address: str = "UseNodeIP"  # BGPPeer sourceAddress "UseNodeIP" | "None". Informational: the
    #   session is pinned to local_address either way (ExaBGP 5.0.15 breaks on "local-address auto")
    next_hop_mode: str = NEXT_HOP_AUTO  # NEXT_HOP_AUTO | NEXT_HOP_SELF | NEXT_HOP_KEEP, for the export side
    rr_client: bool = False  # we reflect routes to this peer (we have a cluster id, iBGP, peer not in it)
    rr_cluster_id: str = ""  # our cluster id when rr_client, else ""
    num_allow_local_as: int = 0  # BGPPeer numAllowedLocalASNumbers: our AS may appear this often on import
    filters: tuple[str, ...] = ()  # BGPFilter names, in the BGPPeer's order (policy belongs to the RIB)
    reachable_by: str = ""  # BGPPeer reachableBy: gateway for a static /32 (/128) to the peer, "" = none
    resource: str = ""  # the BGPPeer this session comes from ("" for the node-to-node mesh)

    @property
    def ibgp(self) -> bool:
        return self.peer_as == self.local_as


@dataclass(frozen=True, order=True)
class PoolIntent:
    """An IP pool as the BGP layer needs it."""

    cidr: str
    ipip_mode: str = "Never"  # Never | Always | CrossSubnet
    vxlan_mode: str = "Never"
    disable_bgp_export: bool = False
    disabled: bool = False


@dataclass(frozen=True, order=True)
class PrefixAdvertisement:
    """BGPConfiguration prefixAdvertisements with community names resolved: communities to add to
    exported routes inside ``cidr`` (standard ``aa:nn`` and large ``aa:nn:mm``, sorted, deduplicated)."""

    cidr: str
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeIntent:
    """Everything this node's BGP layer should be doing, derived from one datastore snapshot."""

    node: str
    router_id: str
    local_as: int
    ipv4_address: str = ""  # bare IP, "" when the node has none
    ipv4_network: str = ""  # the node's subnet (from the CIDR form of spec.bgp.ipv4Address)
    ipv6_address: str = ""
    ipv6_network: str = ""
    listen_port: int = 179
    peers: tuple[PeerIntent, ...] = ()
    pools: tuple[PoolIntent, ...] = ()
    local_blocks: tuple[str, ...] = ()  # confirmed block affinities of this node, sorted CIDR strings
    # Problems found in the snapshot (invalid resources skipped), for status and metrics.
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # --- optional: route reflection, services, bind mode, logging, filters ---
    rr_cluster_id: str = ""  # set when this node is a route reflector
    prefix_advertisements: tuple[PrefixAdvertisement, ...] = ()  # node.<name> config replaces default's
    service_cluster_ips: tuple[str, ...] = ()  # BGPConfiguration serviceClusterIPs, normalised CIDRs
    service_external_ips: tuple[str, ...] = ()
    service_loadbalancer_ips: tuple[str, ...] = ()
    bind_mode: str = "None"  # "None" (listen on every address) | "NodeIP" (only on the node's addresses)
    # Trace | Debug | Info | Warning | Error | Fatal | None (node.<name> overrides); None when not set
    log_severity: str | None = None
    bgp_filters: tuple[BGPFilter, ...] = ()  # the BGPFilters this node's sessions name, sorted by name
    # --- kernel programming ---
    program_cluster_routes: str = "Enabled"  # BGPConfiguration programClusterRoutes; absent = v3.32's Enabled

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(sorted({p.family for p in self.peers}))

    @property
    def listen_addresses(self) -> tuple[str, ...]:
        """Where ExaBGP's listener should bind (``exabgp.tcp.bind``).

        bindMode NodeIP: the node's addresses. Otherwise BIRD listens on every address; we do that for
        IPv4 (``0.0.0.0``) but keep the node's own IPv6 address, because a ``::`` socket would also take
        IPv4 connections as ``::ffff:a.b.c.d`` (no neighbour matches those) and collide with ``0.0.0.0``.
        """
        if self.bind_mode == "NodeIP":
            return tuple(a for a in (self.ipv4_address, self.ipv6_address) if a)
        ipv4 = ("0.0.0.0",) if self.ipv4_address else ()
        return ipv4 + ((self.ipv6_address,) if self.ipv6_address else ())

    @property
    def gtsm_peers(self) -> tuple[PeerIntent, ...]:
        """Sessions with TTL security, which ``bgp.gtsm`` enforces."""
        return tuple(p for p in self.peers if p.ttl_security)


def intent_document(intent: NodeIntent) -> dict[str, Any]:
    """The intent as JSON-ready data with passwords redacted: the "policy" half of the golden files
    (communities, service ranges, reflection, next-hop modes, filters never appear in exabgp.conf) and
    what ``calico-bgp confgen render --intent`` prints."""
    document = dataclasses.asdict(intent)
    for peer in document["peers"]:
        if peer["password"]:
            peer["password"] = "<redacted>"
    return document
