"""The pure calculation: datastore snapshot + node name -> the node's BGP intent.

Stage: between the datastore syncer and the three dataplanes. ``intent_for`` is a function of its
arguments only (no I/O, no clock, no environment), so every rule below is tested with tables.

Owns: Calico's session derivation (today the node-to-node mesh), the node's identity (router id, AS,
addresses, listen port), its pools and its confirmed local blocks, all in ``confgen.intent`` types.

Complicating factors (Calico behaviour reproduced on purpose; see the reference's mesh rules):
- "Is this myself?" is an IP comparison, not a name comparison: a node never peers with an address it
  owns, even if another Node resource claims the same IP.
- The passive side of a mesh pair is the one whose peer IP is *lexically* greater as a string
  (``"10.0.0.9" > "10.0.0.12"``). Both ends compute the same answer, so exactly one of them connects;
  that avoids the connection collision that aborted graceful restart in BIRD.
- A node with a route-reflector cluster id takes no part in the mesh, and no node meshes with it.
- Two nodes claiming the same peer address would give ExaBGP duplicate neighbours, which it rejects;
  the first node by name wins and the clash becomes a warning.
- A node that is missing, has no address, or (IPv6-only) has no router id still gets an intent: no
  sessions plus a warning, so status can say why instead of the daemon crashing.
"""

from __future__ import annotations

import ipaddress

from confgen.datastore.base import Snapshot
from confgen.intent import MESH, NodeIntent, PeerIntent, PoolIntent
from confgen.model import Model, Node, parse_snapshot

FAMILIES = ("ipv4", "ipv6")


def mesh_name(address: str) -> str:
    """Calico's protocol name for a mesh session: dots and colons become underscores.

    >>> mesh_name("10.0.0.12"), mesh_name("fd00::12")
    ('Mesh_10_0_0_12', 'Mesh_fd00__12')
    """
    return "Mesh_" + address.replace(".", "_").replace(":", "_")


def intent_for(snapshot: Snapshot, node_name: str, *, router_id: str | None = None) -> NodeIntent:
    """The intent of ``node_name`` for one snapshot. ``router_id`` overrides the node's IPv4 address
    (what ``CALICO_ROUTER_ID`` does); it must be an IPv4 literal."""
    model, warnings = parse_snapshot(snapshot)
    return intent_from_model(model, node_name, warnings=warnings, router_id=router_id)


def intent_from_model(
    model: Model, node_name: str, *, warnings: list[str] | None = None, router_id: str | None = None
) -> NodeIntent:
    warnings = list(warnings or ())
    if router_id is not None:
        router_id = str(ipaddress.IPv4Address(router_id))  # ValueError: a caller bug, not data

    pools = tuple(
        sorted(
            PoolIntent(
                cidr=pool.cidr,
                ipip_mode=pool.ipip_mode,
                vxlan_mode=pool.vxlan_mode,
                disable_bgp_export=pool.disable_bgp_export,
                disabled=pool.disabled,
            )
            for pool in model.ip_pools.values()
        )
    )
    local_blocks = _local_blocks(model)

    me = model.nodes.get(node_name)
    if me is None:
        warnings.append(f"Node {node_name}: not found in the datastore; no BGP sessions")
        return NodeIntent(
            node=node_name,
            router_id=router_id or "",
            local_as=model.as_number,
            listen_port=model.listen_port_of(node_name),
            pools=pools,
            local_blocks=local_blocks,
            warnings=tuple(warnings),
        )

    local_as = me.as_number if me.as_number is not None else model.as_number
    router_id = router_id or me.ipv4_address
    peers: tuple[PeerIntent, ...] = ()
    if not me.ipv4_address and not me.ipv6_address:
        warnings.append(f"Node {node_name}: spec.bgp has no ipv4Address or ipv6Address; no BGP sessions")
    elif not router_id:
        warnings.append(
            f"Node {node_name}: no IPv4 address to use as router id (set CALICO_ROUTER_ID); no BGP sessions"
        )
    else:
        peers = _mesh_peers(model, me, local_as, warnings)

    return NodeIntent(
        node=node_name,
        router_id=router_id,
        local_as=local_as,
        ipv4_address=me.ipv4_address,
        ipv4_network=me.ipv4_network,
        ipv6_address=me.ipv6_address,
        ipv6_network=me.ipv6_network,
        listen_port=model.listen_port_of(node_name),
        peers=peers,
        pools=pools,
        local_blocks=local_blocks,
        warnings=tuple(warnings),
    )


def _local_blocks(model: Model) -> tuple[str, ...]:
    networks = [ipaddress.ip_network(a.cidr) for a in model.block_affinities.values() if a.confirmed]
    # A /32 (/128) "block" is a single borrowed address, not an aggregate: confd never renders it.
    networks = [n for n in networks if n.prefixlen != n.max_prefixlen]
    return tuple(n.with_prefixlen for n in sorted(networks, key=lambda n: (n.version, n)))


def _mesh_peers(model: Model, me: Node, local_as: int, warnings: list[str]) -> tuple[PeerIntent, ...]:
    if not model.mesh_enabled or me.route_reflector_cluster_id:
        return ()
    peers: dict[tuple[str, str], PeerIntent] = {}
    for family in FAMILIES:
        my_ip = me.address(family)
        if not my_ip:
            continue
        for other in sorted(model.nodes.values(), key=lambda n: n.name):
            peer_ip = other.address(family)
            if not peer_ip or peer_ip == my_ip or other.route_reflector_cluster_id:
                continue
            clash = peers.get((family, peer_ip))
            if clash is not None:
                warnings.append(
                    f"Node {other.name}: address {peer_ip} is also used by Node {clash.calico_node}; "
                    f"no mesh session to {other.name}"
                )
                continue
            peers[(family, peer_ip)] = PeerIntent(
                name=mesh_name(peer_ip),
                address=peer_ip,
                family=family,
                peer_as=other.as_number if other.as_number is not None else model.as_number,
                local_as=local_as,
                local_address=my_ip,
                kind=MESH,
                port=model.listen_port_of(other.name),
                passive=peer_ip > my_ip,  # Calico's lexical string rule, on purpose
                calico_node=other.name,
            )
    return tuple(sorted(peers.values(), key=lambda p: (p.family, ipaddress.ip_address(p.address), p.port)))
