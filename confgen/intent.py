"""The node's BGP intent: what confgen computes and every dataplane consumes.

Stage: output of the pure calculation (``confgen.calc.intent_for``), input of the three dataplanes — the
rendered ExaBGP config (``confgen.render``), the announcements (``bgp.speaker``) and the kernel routes
(``routes.resolve``, through ``bgp.daemon`` which translates pools into the routes package's own types).

Owns: plain frozen value types, nothing else. Equality matters: the daemon compares the new intent with the
previous one to decide whether anything downstream has to move, so every field is hashable and ordered
deterministically (sorted tuples, never sets or dicts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Peer types, spelled as `calicoctl node status` prints them.
MESH = "node-to-node mesh"
GLOBAL = "global"
NODE_SPECIFIC = "node specific"


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
    password: str = ""  # already resolved; validated by confgen before it gets here

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

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(sorted({p.family for p in self.peers}))
