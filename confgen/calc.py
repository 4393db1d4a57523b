"""The pure calculation: datastore snapshot + node name (+ secrets) -> the node's BGP intent.

Stage: between the datastore syncer and the three dataplanes. ``intent_for`` is a function of its
arguments only (no I/O, no clock, no environment), so every rule below is tested with tables. The loop
reads the secret files and passes their contents in; the previous model is passed in for the
"last valid version" rule (``confgen.model.parse_snapshot``).

Owns: the node's identity (router id, AS, addresses, listen port, reflector cluster id), its pools, its
confirmed local blocks and its cluster-wide settings (communities, service ranges, bind mode, log
level), all in ``confgen.intent`` types. The sessions come from ``confgen.peering``.

Complicating factors:
- "Is this myself?" is an IP comparison, not a name comparison: a node never peers with an address it
  owns, even if another Node resource claims the same IP.
- A node that is missing, has no address, or (IPv6-only) has no router id still gets an intent: no
  sessions plus a warning, so status can say why instead of the daemon crashing.
- ``CALICO_ADVERTISE_CLUSTER_IPS`` (an environment override in confd) is the daemon's to apply: this
  module reads no environment.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Mapping

from confgen.bgpfilter import BGPFilter
from confgen.datastore.base import Snapshot
from confgen.intent import NodeIntent, PeerIntent, PoolIntent
from confgen.model import Model, parse_snapshot
from confgen.peering import FAMILIES, Peering, session_name
from confgen.validate import SecretError, SecretRef

__all__ = ["FAMILIES", "intent_for", "intent_from_model", "mesh_name", "router_id_setting"]


def router_id_setting(value: str | None, node_name: str) -> str | None:
    """What ``CALICO_ROUTER_ID`` means: unset -> None (the node's IPv4 address), ``hash`` -> Calico's
    hash of the node name, anything else -> that IPv4 literal (ValueError if it is not one).

    >>> router_id_setting("hash", "node-1"), router_id_setting("192.0.2.1", "x"), router_id_setting("", "x")
    ('53.151.27.230', '192.0.2.1', None)
    """
    if not value:
        return None
    if value == "hash":
        # SHA-256 of the name, first four bytes; a first octet above 223 (multicast and reserved, which
        # BGP refuses as an identifier, calico#5146) is moved down by 32.
        first, *rest = hashlib.sha256(node_name.encode()).digest()[:4]
        return ".".join(str(octet) for octet in (first - 32 if first > 223 else first, *rest))
    return str(ipaddress.IPv4Address(value))


# Warnings travel in every intent, every status report and the log. A datastore full of broken resources
# (10,000 invalid BGPPeers) must not make each of those megabytes long; calico_bgp_invalid_resources still
# counts every one.
MAX_WARNINGS = 100


def bounded_warnings(warnings: list[str]) -> tuple[str, ...]:
    """The first ``MAX_WARNINGS`` warnings, the last one saying how many more were left out."""
    if len(warnings) <= MAX_WARNINGS:
        return tuple(warnings)
    kept = warnings[: MAX_WARNINGS - 1]
    return (*kept, f"... and {len(warnings) - len(kept)} more problems (the first {len(kept)} are shown)")


def mesh_name(address: str) -> str:
    """Calico's protocol name for a mesh session: dots and colons become underscores.

    >>> mesh_name("10.0.0.12"), mesh_name("fd00::12")
    ('Mesh_10_0_0_12', 'Mesh_fd00__12')
    """
    return session_name("Mesh", address)


def intent_for(
    snapshot: Snapshot,
    node_name: str,
    *,
    router_id: str | None = None,
    secrets: Mapping[SecretRef, str | SecretError] | None = None,
    last_good: Model | None = None,
) -> NodeIntent:
    """The intent of ``node_name`` for one snapshot. ``router_id`` overrides the node's IPv4 address
    (what ``CALICO_ROUTER_ID`` does); it must be an IPv4 literal. ``secrets`` holds the referenced
    secrets (value or why not); ``last_good`` is the previous model, whose resources stand in for ones
    that became invalid."""
    model, warnings = parse_snapshot(snapshot, last_good)
    return intent_from_model(model, node_name, warnings=warnings, router_id=router_id, secrets=secrets)


def intent_from_model(
    model: Model,
    node_name: str,
    *,
    warnings: list[str] | None = None,
    router_id: str | None = None,
    secrets: Mapping[SecretRef, str | SecretError] | None = None,
) -> NodeIntent:
    warnings = list(warnings or ())
    if router_id is not None:
        router_id = str(ipaddress.IPv4Address(router_id))  # ValueError: a caller bug, not data

    cluster_ips, external_ips, loadbalancer_ips = model.service_ranges
    # A partial rather than a dict of keyword arguments, so each field is checked against NodeIntent's type.
    intent = functools.partial(
        NodeIntent,
        node=node_name,
        listen_port=model.listen_port_of(node_name),
        pools=_pools(model),
        local_blocks=_local_blocks(model),
        prefix_advertisements=model.prefix_advertisements_of(node_name),
        service_cluster_ips=cluster_ips,
        service_external_ips=external_ips,
        service_loadbalancer_ips=loadbalancer_ips,
        bind_mode=model.bind_mode,
        log_severity=model.log_severity_of(node_name),
        program_cluster_routes=model.program_cluster_routes,
    )

    me = model.nodes.get(node_name)
    if me is None:
        warnings.append(f"Node {node_name}: not found in the datastore; no BGP sessions")
        return intent(
            router_id=router_id or "", local_as=model.as_number, warnings=bounded_warnings(warnings)
        )

    local_as = model.as_number_of(me)
    router_id = router_id or me.ipv4_address
    peers: tuple[PeerIntent, ...] = ()
    if not me.ipv4_address and not me.ipv6_address:
        warnings.append(f"Node {node_name}: spec.bgp has no ipv4Address or ipv6Address; no BGP sessions")
    elif not router_id:
        warnings.append(
            f"Node {node_name}: no IPv4 address to use as router id (set CALICO_ROUTER_ID); no BGP sessions"
        )
    else:
        peers = Peering(model, me, local_as, dict(secrets or {}), warnings).sessions()

    return intent(
        bgp_filters=_filters(model, peers, warnings),
        router_id=router_id,
        local_as=local_as,
        ipv4_address=me.ipv4_address,
        ipv4_network=me.ipv4_network,
        ipv6_address=me.ipv6_address,
        ipv6_network=me.ipv6_network,
        peers=peers,
        warnings=bounded_warnings(warnings),
        rr_cluster_id=me.route_reflector_cluster_id,
    )


def _filters(model: Model, peers: tuple[PeerIntent, ...], warnings: list[str]) -> tuple[BGPFilter, ...]:
    """The BGPFilters the sessions name. A name with no BGPFilter at all is reported (confd silently
    skips it, which hides typos); one that failed validation has been reported already."""
    found: dict[str, BGPFilter] = {}
    for peer in peers:
        for name in peer.filters:
            if name in model.bgp_filters:
                found[name] = model.bgp_filters[name]
            elif name not in model.invalid.get("BGPFilter", ()):
                warning = f"BGPPeer {peer.resource}: spec.filters names {name}, which is no BGPFilter"
                if warning not in warnings:
                    warnings.append(warning)
    return tuple(found[name] for name in sorted(found))


def _pools(model: Model) -> tuple[PoolIntent, ...]:
    return tuple(
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


def _local_blocks(model: Model) -> tuple[str, ...]:
    networks = [ipaddress.ip_network(a.cidr) for a in model.block_affinities.values() if a.confirmed]
    # A /32 (/128) "block" is a single borrowed address, not an aggregate: confd never renders it.
    networks = [n for n in networks if n.prefixlen != n.max_prefixlen]
    return tuple(n.with_prefixlen for n in sorted(networks, key=lambda n: (n.version, n)))
