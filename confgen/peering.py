"""Which BGP sessions one node holds: the node-to-node mesh plus every peering its BGPPeers produce.

Stage: the core of the pure calculation (``confgen.calc`` assembles the intent around it). Everything here
is a function of the validated model, the node and the secrets handed in: no I/O, no clock.

Owns: Calico's session rules (docs/calico-model.md): mesh,
global / node / selector peerings, automatic reverse peerings, their dedupe, the passive side, route
reflection, and the per-session settings (AS, port, password, timers, TTL security, next hop).

Complicating factors:
- Expansion order decides who wins a clash, exactly as in confd's ``updatePeersV1``: first every global
  BGPPeer, then node-scoped ones, then the automatic reverse peerings, each pass in BGPPeer name order
  (confd iterates a Go map; we pick names for determinism). A key is (scope, address, port); a
  node-scoped peering with the key of a global one is dropped, and within a key the first writer wins.
- ExaBGP allows one neighbour per address (its neighbour identity has no port), and the speaker keys
  sessions by address, so a second peering to an address already taken on another port is refused with
  a warning. A mesh session to an address that an explicit peering also covers gives way silently: the
  explicit one carries the user's settings, and with equal settings ExaBGP does not even reset it.
- Reverse peerings make one BGPPeer symmetric: the nodes its peer side selects also peer back with the
  nodes its node side selects. They carry the session-wide settings (password, timers, TTL security,
  source address) but not the directional ones (filters, next-hop mode, allowed local AS, local AS
  override): those describe the forward side's policy. A forward ``localASNumber`` is the AS the
  reverse side must expect.
- The passive side: Calico makes mesh and global peerings towards Calico nodes passive on the side whose
  address is lexically greater, so exactly one end connects. We apply that rule to *every* session
  between Calico nodes, including node-scoped and reverse ones, which Calico leaves both active: BGP
  collision handling would sort those out, but two connects per restart also re-race the graceful
  restart that the rule was made to protect.
- Route reflection: a node with a cluster id treats every iBGP peer that is not in its cluster as a
  client. The mesh never includes reflectors, on either end.
- A secret that cannot be used disables the peerings that need it (one warning per BGPPeer), and those
  peerings still claim their key, so a lower-priority BGPPeer does not silently take their place.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from confgen.bgppeer import BGPPeer
from confgen.intent import (
    DEFAULT_LLGR_STALE_TIME,
    DEFAULT_RESTART_TIME,
    GLOBAL,
    MESH,
    NEXT_HOP_AUTO,
    NEXT_HOP_KEEP,
    NODE_SPECIFIC,
    PeerIntent,
)
from confgen.model import Model, Node
from confgen.validate import SecretError, SecretRef, password_problem

FAMILIES = ("ipv4", "ipv6")
DEFAULT_HOLD_TIME = 90
Secrets = dict[SecretRef, "str | SecretError"]


def session_name(prefix: str, address: str, port: int = 0) -> str:
    """Calico's protocol name: dots and colons become underscores, a configured port is appended.

    >>> session_name("Mesh", "fd00::12"), session_name("Global", "10.0.0.1", 1790)
    ('Mesh_fd00__12', 'Global_10_0_0_1_port_1790')
    """
    name = f"{prefix}_" + address.replace(".", "_").replace(":", "_")
    return f"{name}_port_{port}" if port else name


@dataclass(frozen=True)
class _Target:
    """The remote end of one peering, before the BGPPeer's settings are applied."""

    address: str
    family: str
    port: int  # 0 = not configured (179)
    peer_as: int
    calico_node: str = ""
    rr_cluster_id: str = ""


@dataclass(frozen=True)
class _Claim:
    scope: str  # "global" | "node"
    target: _Target
    resource: BGPPeer
    reverse: bool


class Peering:
    """Derives one node's sessions; ``sessions()`` returns them sorted by (family, address, port)."""

    def __init__(self, model: Model, me: Node, local_as: int, secrets: Secrets, warnings: list[str]) -> None:
        self.model, self.me, self.local_as = model, me, local_as
        self.secrets, self.warnings = secrets, warnings
        self.nodes = sorted(model.nodes.values(), key=lambda n: n.name)
        self.owner_of: dict[str, Node] = {}  # address -> first node (by name) claiming it
        for node in self.nodes:
            for family in FAMILIES:
                address = node.address(family)
                if address:
                    self.owner_of.setdefault(address, node)
        self._passwords: dict[str, tuple[bool, str]] = {}

    def sessions(self) -> tuple[PeerIntent, ...]:
        by_address: dict[str, PeerIntent] = {}
        owner: dict[str, str] = {}  # address -> BGPPeer whose claim got it
        for claim in self._claims():
            target = claim.target
            if target.address in owner:
                # Same address, another port (equal keys never get here): ExaBGP cannot hold both.
                self.warnings.append(
                    f"BGPPeer {claim.resource.name}: a session with {target.address} already comes from "
                    f"BGPPeer {owner[target.address]}; ExaBGP holds one session per address, so the one "
                    f"on port {target.port or 179} is skipped"
                )
                continue
            owner[target.address] = claim.resource.name
            session = self._session(claim)
            if session is not None:
                by_address[target.address] = session
        for session in self._mesh():
            if session.address not in owner:
                by_address.setdefault(session.address, session)
        return tuple(sorted(by_address.values(), key=_sort_key))

    # ------------------------------------------------------------------ expansion

    def _claims(self) -> list[_Claim]:
        peers = sorted(self.model.bgp_peers.values(), key=lambda p: p.name)
        claims: dict[tuple[str, str, int], _Claim] = {}
        global_keys: set[tuple[str, int]] = set()

        def emit(scope: str, target: _Target, resource: BGPPeer, reverse: bool = False) -> None:
            if target.address == self.me.address(target.family):
                return  # never peer with ourselves
            key = (scope, target.address, target.port)
            if key in claims or (scope == "node" and (target.address, target.port) in global_keys):
                return
            claims[key] = _Claim(scope, target, resource, reverse)
            if scope == "global":
                global_keys.add((target.address, target.port))

        for peer in peers:
            if peer.is_global:
                for target in self._forward_targets(peer):
                    emit("global", target, peer)
        for peer in peers:
            if not peer.is_global and self._selects_me(peer):
                for target in self._forward_targets(peer):
                    emit("node", target, peer)
        for peer in peers:
            if peer.reverse_peering == "Auto" and self._reverse_selects_me(peer):
                for target in self._reverse_targets(peer):
                    emit("node", target, peer, reverse=True)
        return list(claims.values())

    def _selects_me(self, peer: BGPPeer) -> bool:
        if peer.node_selector is not None:
            return peer.node_selector.matches(self.me.label_map)
        return peer.node == self.me.name

    def _node_target(self, node: Node, family: str, peer_as: int | None = None) -> _Target | None:
        address = node.address(family)
        if not address:
            return None
        asn = peer_as if peer_as is not None else self.model.as_number_of(node)
        port = self.model.configured_listen_port(node.name)
        return _Target(address, family, port, asn, node.name, node.route_reflector_cluster_id)

    def _forward_targets(self, peer: BGPPeer) -> list[_Target]:
        if peer.peer_selector is not None:
            selected = [n for n in self.nodes if peer.peer_selector.matches(n.label_map)]
            targets = [self._node_target(n, f) for n in selected for f in FAMILIES]
            return [t for t in targets if t is not None]
        assert peer.as_number is not None  # the model requires it with peerIP
        port = peer.peer_port
        if not port:
            matching = self._nodes_at(peer.peer_ip, peer.as_number, 0)
            if matching:
                port = self.model.configured_listen_port(matching[0].name)
        node = self.owner_of.get(peer.peer_ip)
        return [
            _Target(
                peer.peer_ip,
                peer.peer_family,
                port,
                peer.as_number,
                node.name if node else "",
                node.route_reflector_cluster_id if node else "",
            )
        ]

    def _nodes_at(self, address: str, asn: int, port: int) -> list[Node]:
        """Calico nodes at ``address`` running ``asn`` (and listening on ``port`` when one is given)."""
        found = []
        for node in self.nodes:
            if address not in (node.ipv4_address, node.ipv6_address):
                continue
            if self.model.as_number_of(node) != asn:
                continue
            if port and self.model.listen_port_of(node.name) != port:
                continue
            found.append(node)
        return found

    def _reverse_selects_me(self, peer: BGPPeer) -> bool:
        if peer.peer_selector is not None:
            return peer.peer_selector.matches(self.me.label_map)
        assert peer.as_number is not None
        return self.me in self._nodes_at(peer.peer_ip, peer.as_number, peer.peer_port)

    def _reverse_targets(self, peer: BGPPeer) -> list[_Target]:
        if peer.node_selector is not None:
            sources = [n for n in self.nodes if peer.node_selector.matches(n.label_map)]
        elif peer.node:
            sources = [n for n in self.nodes if n.name == peer.node]
        else:
            sources = list(self.nodes)
        families = FAMILIES if peer.peer_selector is not None else (peer.peer_family,)
        targets = []
        for node in sources:
            for family in families:
                # The forward side may speak with a local AS of its own: that is what we must expect.
                target = self._node_target(node, family, peer.local_as_number)
                if target is not None:
                    targets.append(target)
        return targets

    # ------------------------------------------------------------------ settings

    def _password(self, who: str, ref: SecretRef | None) -> tuple[bool, str]:
        """(usable, password) for a secret reference; warns once per resource when it is not usable."""
        if ref is None:
            return True, ""
        if who in self._passwords:
            return self._passwords[who]
        value = self.secrets.get(ref, SecretError("no secrets directory is configured"))
        problem = str(value) if isinstance(value, SecretError) else password_problem(value)
        result = (not problem, "" if problem else str(value))
        if problem:
            self.warnings.append(f"{who}: password secret {ref}: {problem}; its sessions are skipped")
        self._passwords[who] = result
        return result

    def _session(self, claim: _Claim) -> PeerIntent | None:
        peer, target = claim.resource, claim.target
        local_address = self.me.address(target.family)
        if not local_address:
            if not claim.reverse and peer.peer_selector is None:
                self.warnings.append(
                    f"BGPPeer {peer.name}: this node has no {target.family} address "
                    f"to peer with {target.address}"
                )
            return None
        usable, password = self._password(f"BGPPeer {peer.name}", peer.password)
        if not usable:
            return None
        local_as = self.local_as if claim.reverse or peer.local_as_number is None else peer.local_as_number
        ebgp = target.peer_as != local_as
        if claim.reverse:
            next_hop = NEXT_HOP_AUTO
        elif peer.next_hop_mode in ("Self", "Keep"):
            next_hop = peer.next_hop_mode
        else:
            next_hop = NEXT_HOP_KEEP if peer.keep_original_next_hop and ebgp else NEXT_HOP_AUTO
        my_cluster = self.me.route_reflector_cluster_id
        rr_client = bool(my_cluster) and not ebgp and target.rr_cluster_id != my_cluster
        keepalive = peer.keepalive_time or 0
        return PeerIntent(
            name=session_name("Global" if claim.scope == "global" else "Node", target.address, target.port),
            address=target.address,
            family=target.family,
            peer_as=target.peer_as,
            local_as=local_as,
            local_address=local_address,
            kind=GLOBAL if claim.scope == "global" else NODE_SPECIFIC,
            port=target.port or 179,
            passive=bool(target.calico_node) and target.address > local_address,  # Calico's lexical rule
            calico_node=target.calico_node,
            hold_time=_hold_time(peer.hold_time, keepalive),
            password=password,
            restart_time=_restart_time(peer),
            keepalive_time=keepalive,
            llgr_stale_time=_llgr_stale_time(peer),
            ttl_security=peer.ttl_security,
            bfd=peer.failure_detection_mode == "BFDIfDirectlyConnected",
            source_address=peer.source_address,
            next_hop_mode=next_hop,
            rr_client=rr_client,
            rr_cluster_id=my_cluster if rr_client else "",
            num_allow_local_as=0 if claim.reverse else peer.num_allowed_local_as_numbers,
            filters=() if claim.reverse else peer.filters,
            reachable_by="" if claim.reverse else peer.reachable_by,
            resource=peer.name,
        )

    def _mesh(self) -> list[PeerIntent]:
        model, me = self.model, self.me
        if not model.mesh_enabled or me.route_reflector_cluster_id:
            return []
        peers: dict[tuple[str, str], PeerIntent] = {}
        password: str | None = None
        for family in FAMILIES:
            my_ip = me.address(family)
            if not my_ip:
                continue
            for other in self.nodes:
                peer_ip = other.address(family)
                if not peer_ip or peer_ip == my_ip or other.route_reflector_cluster_id:
                    continue
                clash = peers.get((family, peer_ip))
                if clash is not None:
                    self.warnings.append(
                        f"Node {other.name}: address {peer_ip} is also used by Node {clash.calico_node}; "
                        f"no mesh session to {other.name}"
                    )
                    continue
                if password is None:
                    usable, password = self._password("BGPConfiguration default", model.node_mesh_password)
                    if not usable:
                        return []
                restart = model.node_mesh_restart_time
                peers[(family, peer_ip)] = PeerIntent(
                    name=session_name("Mesh", peer_ip),
                    address=peer_ip,
                    family=family,
                    peer_as=model.as_number_of(other),
                    local_as=self.local_as,
                    local_address=my_ip,
                    kind=MESH,
                    port=model.listen_port_of(other.name),
                    passive=peer_ip > my_ip,  # Calico's lexical string rule, on purpose
                    calico_node=other.name,
                    password=password,
                    restart_time=DEFAULT_RESTART_TIME if restart is None else restart,
                    hold_time=_hold_time(model.node_mesh_hold_time, 0),
                    bfd=model.node_mesh_bfd,
                )
        return list(peers.values())


def _hold_time(hold_time: int | None, keepalive: int) -> int:
    """An explicit hold time (extension), else 3 x keepaliveTime, else the default."""
    if hold_time is not None:
        return hold_time
    return max(3, 3 * keepalive) if keepalive else DEFAULT_HOLD_TIME


def _restart_time(peer: BGPPeer) -> int:
    """The graceful-restart time we advertise. In long-lived mode maxRestartTime is the stale time, and
    the restart time is the default."""
    if peer.restart_mode == "LongLivedGracefulRestart" or peer.max_restart_time is None:
        return DEFAULT_RESTART_TIME
    return peer.max_restart_time


def _llgr_stale_time(peer: BGPPeer) -> int:
    if peer.restart_mode != "LongLivedGracefulRestart":
        return 0
    return DEFAULT_LLGR_STALE_TIME if peer.max_restart_time is None else peer.max_restart_time


def _sort_key(peer: PeerIntent) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    return (peer.family, ipaddress.ip_address(peer.address), peer.port)
