"""Calico's etcd v3 key layout: format and parse the keys confgen reads.

Stage: pure helper of the datastore syncer (``confgen.datastore.etcd``) and of the in-memory fake
(``confgen.datastore.memory``); both turn keys into (kind, name) or (node, block CIDR) with these functions,
so the fake exercises exactly the decoding the real syncer does.

Owns: the key strings only. Values are decoded elsewhere (``confgen.datastore.base``) and validated in the
pure calculation (``confgen.model``).

Complicating factors:
- v3 resources live under one prefix per kind (the lower-case plural); every other plural under
  ``RESOURCE_PREFIX`` (network policies, workload endpoints, ...) is not ours and parses to ``None``.
- Block affinities key the CIDR with ``-`` instead of ``/`` (``10.65.1.0-26``; IPv6 ``fd00:1::-122``), and
  only *this* node's host affinities are watched: other nodes' blocks reach us over BGP, not etcd.
- Keys come from a shared datastore, so anything that does not parse cleanly is ignored, never trusted.

>>> resource_key("IPPool", "pool-a")
'/calico/resources/v3/projectcalico.org/ippools/pool-a'
>>> parse_affinity_key("/calico/ipam/v2/host/node-1/ipv4/block/10.65.1.0-26")
('node-1', '10.65.1.0/26')
"""

from __future__ import annotations

from confgen import addresses

RESOURCE_PREFIX = "/calico/resources/v3/projectcalico.org/"
IPAM_HOST_PREFIX = "/calico/ipam/v2/host/"

PLURALS = {
    "BGPConfiguration": "bgpconfigurations",
    "BGPPeer": "bgppeers",
    "BGPFilter": "bgpfilters",
    "Node": "nodes",
    "IPPool": "ippools",
    # Read by the node-status reporter, never by the BGP configuration (confgen.nodestatus keeps it out).
    "CalicoNodeStatus": "caliconodestatuses",
}
KINDS_BY_PLURAL = {plural: kind for kind, plural in PLURALS.items()}

FAMILIES = ("ipv4", "ipv6")


def resource_key(kind: str, name: str) -> str:
    """The etcd key of a v3 resource. Raises ValueError for kinds confgen does not read."""
    try:
        plural = PLURALS[kind]
    except KeyError:
        raise ValueError(f"unknown resource kind {kind!r}") from None
    if not name or "/" in name:
        raise ValueError(f"invalid resource name {name!r}")
    return f"{RESOURCE_PREFIX}{plural}/{name}"


def resource_prefix(kind: str) -> str:
    """The prefix holding every resource of one kind (what the syncer lists and watches)."""
    return f"{RESOURCE_PREFIX}{PLURALS[kind]}/"


def parse_resource_key(key: str) -> tuple[str, str] | None:
    """(kind, name) of a resource key, or None for anything else (other kinds, nested paths, garbage)."""
    if not key.startswith(RESOURCE_PREFIX):
        return None
    plural, sep, name = key[len(RESOURCE_PREFIX) :].partition("/")
    kind = KINDS_BY_PLURAL.get(plural)
    if kind is None or not sep or not name or "/" in name:
        return None
    return kind, name


def affinity_prefix(node: str, family: str = "ipv4") -> str:
    """The prefix of one node's block affinities for one address family."""
    if family not in FAMILIES:
        raise ValueError(f"unknown address family {family!r}")
    if not node or "/" in node:
        raise ValueError(f"invalid node name {node!r}")
    return f"{IPAM_HOST_PREFIX}{node}/{family}/block/"


def affinity_key(node: str, cidr: str) -> str:
    """The key of a node's affinity to a block: the CIDR's '/' becomes '-'."""
    network = addresses.parse_network(cidr, strict=True)  # ValueError for anything that is not a network
    family = "ipv4" if network.version == 4 else "ipv6"
    return affinity_prefix(node, family) + network.with_prefixlen.replace("/", "-")


def parse_affinity_key(key: str) -> tuple[str, str] | None:
    """(node, normalised CIDR) of a host block-affinity key, or None if it is not one."""
    if not key.startswith(IPAM_HOST_PREFIX):
        return None
    parts = key[len(IPAM_HOST_PREFIX) :].split("/")
    if len(parts) != 4 or parts[2] != "block" or parts[1] not in FAMILIES or not parts[0]:
        return None
    node, family, _, dashed = parts
    address, sep, length = dashed.rpartition("-")
    if not sep or not length.isdigit():
        return None
    try:
        # Strict: a key's CIDR is the block's identity, and a scope id or a stray host bit is no block.
        network = addresses.parse_network(f"{address}/{length}", strict=True)
    except ValueError:
        return None
    if (network.version == 4) != (family == "ipv4"):
        return None
    return node, network.with_prefixlen
