"""Typed, validated Calico resources: raw snapshot dicts in, frozen model values (or precise errors) out.

Stage: first half of the pure calculation. ``parse_snapshot`` turns a raw ``Snapshot`` into a ``Model``;
``confgen.calc`` derives the node's intent from that model. BGPPeer, BGPFilter and BGPConfiguration have
their own modules (``confgen.bgppeer``, ``confgen.bgpfilter``, ``confgen.bgpconfig``); field readers
live in ``confgen.validate``.

Owns: the value types of Node, IPPool and BlockAffinity, their parsing, Calico's defaults where a
*resource* defines them, ``Model`` (cluster-wide defaults and per-node overrides), and the "last valid
version" rule.

Complicating factors:
- The etcd datastore has no CRD defaulting: every default Calico's API server would fill in is applied
  here (block sizes, pool modes), and cluster-wide defaults (AS 64512, mesh on, port 179) are resolved by
  ``Model`` because a missing ``default`` BGPConfiguration must behave like an empty one.
- One invalid resource must not take the node down. Each resource is parsed on its own; a failure
  becomes a warning naming kind, name, field and problem. If this process has seen a valid version of the
  same resource before (``last_good``), that version stays in force — a typo in the ``default``
  BGPConfiguration must not turn the mesh back on cluster-wide; otherwise the resource is skipped.
- A ``node.<name>`` BGPConfiguration is honoured only for listenPort, logSeverityScreen and
  prefixAdvertisements (with its own communities), as in Calico; its other fields are ignored.
- Node addresses are in CIDR form (``10.0.0.11/24``): the prefix length is the node's subnet, which
  CrossSubnet routing needs later. A bare IP means a /32.
- Everything that may end up in the rendered config is parsed into a canonical form (``ipaddress``
  normalisation, ints), so nothing a user typed is copied into the config verbatim.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confgen import addresses
from confgen.bgpconfig import BGPConfiguration, parse_bgp_configuration
from confgen.bgpfilter import BGPFilter, parse_bgp_filter
from confgen.bgppeer import BGPPeer, parse_bgp_peer
from confgen.datastore.base import Snapshot
from confgen.intent import PrefixAdvertisement
from confgen.validate import Reader, SecretRef, ValidationError, parse_as_number, show

log = logging.getLogger(__name__)

__all__ = [
    "BGPConfiguration",
    "BlockAffinity",
    "IPPool",
    "Model",
    "Node",
    "ValidationError",
    "parse_as_number",
    "parse_bgp_configuration",
    "parse_block_affinity",
    "parse_ip_pool",
    "parse_node",
    "parse_snapshot",
]

DEFAULT_AS_NUMBER = 64512
DEFAULT_LISTEN_PORT = 179
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}
BLOCK_SIZE_RANGE = {4: (20, 32), 6: (116, 128)}
ENCAP_MODES = ("Never", "Always", "CrossSubnet")
AFFINITY_STATES = ("confirmed", "pending", "pendingDeletion")


@dataclass(frozen=True)
class Node:
    name: str
    ipv4_address: str = ""  # bare IP; "" = none
    ipv4_network: str = ""  # the node's subnet, from the CIDR form
    ipv6_address: str = ""
    ipv6_network: str = ""
    as_number: int | None = None  # None = use the cluster's
    route_reflector_cluster_id: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # metadata.labels, sorted (selectors match on them)

    def address(self, family: str) -> str:
        return self.ipv4_address if family == "ipv4" else self.ipv6_address

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class IPPool:
    name: str
    cidr: str  # normalised network
    ipip_mode: str = "Never"
    vxlan_mode: str = "Never"
    disable_bgp_export: bool = False
    disabled: bool = False
    block_size: int = 26


@dataclass(frozen=True)
class BlockAffinity:
    cidr: str
    state: str = ""  # "" = written by a Calico version that had no states
    deleted: bool = False

    @property
    def confirmed(self) -> bool:
        # confd renders a block when its state is absent or "confirmed"; pending ones are dropped
        # (calico#6867: advertising a pending block duplicates another node's routes).
        return self.state in ("", "confirmed") and not self.deleted


@dataclass(frozen=True)
class Model:
    """The validated view of one snapshot."""

    bgp_configurations: Mapping[str, BGPConfiguration]
    nodes: Mapping[str, Node]
    ip_pools: Mapping[str, IPPool]
    block_affinities: Mapping[str, BlockAffinity]  # this node's, by CIDR
    bgp_peers: Mapping[str, BGPPeer] = field(default_factory=dict)
    bgp_filters: Mapping[str, BGPFilter] = field(default_factory=dict)
    invalid: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # {kind: names that failed}

    def _global(self) -> BGPConfiguration:
        return self.bgp_configurations.get("default") or BGPConfiguration("default")

    def _per_node(self, node: str) -> BGPConfiguration | None:
        return self.bgp_configurations.get(f"node.{node}")

    @property
    def as_number(self) -> int:
        value = self._global().as_number
        return DEFAULT_AS_NUMBER if value is None else value

    def as_number_of(self, node: Node) -> int:
        return node.as_number if node.as_number is not None else self.as_number

    @property
    def mesh_enabled(self) -> bool:
        value = self._global().node_to_node_mesh_enabled
        return True if value is None else value

    @property
    def listen_port(self) -> int:
        value = self._global().listen_port
        return DEFAULT_LISTEN_PORT if value is None else value

    def listen_port_of(self, node: str) -> int:
        """A node's BGP port: its ``node.<name>`` BGPConfiguration may override the cluster's."""
        return self.configured_listen_port(node) or DEFAULT_LISTEN_PORT

    def configured_listen_port(self, node: str) -> int:
        """The port a BGPConfiguration sets for ``node`` (its own, else the cluster's); 0 when none does.
        Calico names a peering ``..._port_<p>`` only for a configured port."""
        for config in (self._per_node(node), self._global()):
            if config is not None and config.listen_port is not None:
                return config.listen_port
        return 0

    def log_severity_of(self, node: str) -> str | None:
        """The node's own logSeverityScreen, else the cluster's; None when neither sets one (the daemon
        then keeps the level of its --log-level flag)."""
        for config in (self._per_node(node), self._global()):
            if config is not None and config.log_severity_screen is not None:
                return config.log_severity_screen
        return None

    def prefix_advertisements_of(self, node: str) -> tuple[PrefixAdvertisement, ...]:
        """The node's own list replaces the cluster's entirely when it has one (confd's rule)."""
        for config in (self._per_node(node), self._global()):
            if config is not None and config.prefix_advertisements is not None:
                return config.prefix_advertisements
        return ()

    @property
    def bind_mode(self) -> str:
        return self._global().bind_mode or "None"

    @property
    def program_cluster_routes(self) -> str:
        # Absent means what Calico v3.32 does by default: the BGP daemon programs every non-VXLAN pool.
        return self._global().program_cluster_routes or "Enabled"

    @property
    def node_mesh_password(self) -> SecretRef | None:
        return self._global().node_mesh_password

    @property
    def node_mesh_restart_time(self) -> int | None:
        return self._global().node_mesh_max_restart_time

    @property
    def node_mesh_hold_time(self) -> int | None:
        return self._global().node_mesh_hold_time

    @property
    def node_mesh_bfd(self) -> bool:
        """BFD on the mesh: the ``default`` configuration's nodeMeshFailureDetectionMode (extension)."""
        return self._global().node_mesh_failure_detection_mode == "BFDIfDirectlyConnected"

    @property
    def service_ranges(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """(cluster IPs, external IPs, load-balancer IPs) CIDRs, from the ``default`` configuration."""
        config = self._global()
        return config.service_cluster_ips, config.service_external_ips, config.service_loadbalancer_ips

    def secret_refs(self) -> frozenset[SecretRef]:
        """Every secret a peering may need: the mesh password and all BGPPeer passwords."""
        refs = {peer.password for peer in self.bgp_peers.values() if peer.password is not None}
        if self.node_mesh_password is not None:
            refs.add(self.node_mesh_password)
        return frozenset(refs)


def _node_address(r: Reader, path: str, version: int) -> tuple[str, str]:
    value = r.get(path, "")
    if value == "":
        return "", ""
    try:
        interface = addresses.parse_interface(value)
    except addresses.AddressError as exc:
        problem = str(exc)
        reason = "" if problem.startswith("is not") else f": it {problem}"
        raise r.error(path, f"{show(value)} is not an IP address or address/prefix{reason}") from None
    if interface.version != version:
        raise r.error(path, f"{show(value)} is not an IPv{version} address")
    return str(interface.ip), interface.network.with_prefixlen


def parse_node(name: str, raw: Any) -> Node:
    r = Reader("Node", name, raw)
    ipv4_address, ipv4_network = _node_address(r, "spec.bgp.ipv4Address", 4)
    ipv6_address, ipv6_network = _node_address(r, "spec.bgp.ipv6Address", 6)
    cluster_id = r.get("spec.bgp.routeReflectorClusterID", "")
    if cluster_id != "":
        try:
            if not isinstance(cluster_id, str):
                raise ValueError
            cluster_id = str(ipaddress.IPv4Address(cluster_id))
        except ValueError:
            raise r.error(
                "spec.bgp.routeReflectorClusterID", f"{show(cluster_id)} is not an IPv4-formatted cluster id"
            ) from None
    return Node(
        name=name,
        ipv4_address=ipv4_address,
        ipv4_network=ipv4_network,
        ipv6_address=ipv6_address,
        ipv6_network=ipv6_network,
        as_number=r.as_number("spec.bgp.asNumber"),
        route_reflector_cluster_id=cluster_id,
        labels=r.labels(),
    )


def parse_ip_pool(name: str, raw: Any) -> IPPool:
    r = Reader("IPPool", name, raw)
    cidr = r.get("spec.cidr", None)
    if cidr is None:
        raise r.error("spec.cidr", "is required")
    # Not strict: calicoctl stores the network address anyway, and a stray host bit must not drop a pool.
    network = ipaddress.ip_network(r.cidr("spec.cidr", cidr))
    ipip_mode = r.choice("spec.ipipMode", ENCAP_MODES, "Never")
    vxlan_mode = r.choice("spec.vxlanMode", ENCAP_MODES, "Never")
    if network.version == 6 and ipip_mode != "Never":
        raise r.error("spec.ipipMode", f"{ipip_mode!r} is not allowed on an IPv6 pool")
    if ipip_mode != "Never" and vxlan_mode != "Never":
        raise r.error("spec.vxlanMode", "cannot be enabled together with spec.ipipMode")
    low, high = BLOCK_SIZE_RANGE[network.version]
    block_size = r.integer("spec.blockSize", low, high)
    if block_size is None:
        block_size = DEFAULT_BLOCK_SIZE[network.version]
    if block_size < network.prefixlen:
        raise r.error("spec.blockSize", f"{block_size} is larger than the pool {network.with_prefixlen}")
    r.selector("spec.nodeSelector")  # not used by BGP, but a broken selector is still a broken pool
    return IPPool(
        name=name,
        cidr=network.with_prefixlen,
        ipip_mode=ipip_mode,
        vxlan_mode=vxlan_mode,
        disable_bgp_export=bool(r.boolean("spec.disableBGPExport")),
        disabled=bool(r.boolean("spec.disabled")),
        block_size=block_size,
    )


def parse_block_affinity(cidr: str, raw: Any) -> BlockAffinity:
    # The key (already parsed into a normalised CIDR) names an affinity; its body is tiny.
    if not isinstance(raw, dict):
        raise ValidationError("BlockAffinity", cidr, "", "is not a JSON object")
    state = raw.get("state") or ""
    if state not in ("",) + AFFINITY_STATES:
        choices = ", ".join(AFFINITY_STATES)
        raise ValidationError("BlockAffinity", cidr, "state", f"{show(state)} is not one of {choices}")
    deleted = raw.get("deleted") or False
    if not isinstance(deleted, bool):
        raise ValidationError("BlockAffinity", cidr, "deleted", f"{show(deleted)} is not a boolean")
    return BlockAffinity(cidr=cidr, state=state, deleted=deleted)


# Every resource kind confgen reads, in the order warnings are reported. The resource CLI validates with
# the same table.
PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "BGPConfiguration": parse_bgp_configuration,
    "Node": parse_node,
    "IPPool": parse_ip_pool,
    "BGPPeer": parse_bgp_peer,
    "BGPFilter": parse_bgp_filter,
}
_MODEL_FIELDS = {
    "BGPConfiguration": "bgp_configurations",
    "Node": "nodes",
    "IPPool": "ip_pools",
    "BGPPeer": "bgp_peers",
    "BGPFilter": "bgp_filters",
}


def _failure(kind: str, name: str, exc: Exception) -> str:
    """The warning for a resource that could not be used.

    A ``ValidationError`` already names the field and the problem. Anything else escaping a parser (a
    ``RecursionError`` from a pathological value, a ``TypeError`` from a JSON type nobody expected) is a
    gap in validation, but it is still this one resource's problem: it is reported the same way, and the
    snapshot's other resources are parsed as if it were not there.
    """
    if isinstance(exc, ValidationError):
        return str(exc)
    log.warning("parsing %s %s raised %s", kind, show(name), exc.__class__.__name__, exc_info=exc)
    return str(ValidationError(kind, name, "", f"could not be parsed ({exc.__class__.__name__})"))


def parse_snapshot(snapshot: Snapshot, last_good: Model | None = None) -> tuple[Model, list[str]]:
    """Validate every resource confgen uses. An invalid one is reported as a warning and replaced by
    its version in ``last_good`` (the previous model of this process) if there is one, else skipped."""
    warnings = list(snapshot.errors)
    parsed: dict[str, dict[str, Any]] = {}
    invalid: dict[str, tuple[str, ...]] = {}
    for kind, parser in PARSERS.items():
        good: dict[str, Any] = {}
        bad: list[str] = []
        previous = getattr(last_good, _MODEL_FIELDS[kind]) if last_good is not None else {}
        raw_by_name = snapshot.resources.get(kind, {})
        for name in sorted(raw_by_name):
            try:
                good[name] = parser(name, raw_by_name[name])
            except Exception as exc:
                bad.append(name)
                message = _failure(kind, name, exc)
                if name in previous:
                    good[name] = previous[name]
                    warnings.append(f"{message}; keeping its last valid version")
                else:
                    warnings.append(message)
        for broken_kind, name in snapshot.broken:
            if broken_kind == kind:
                bad.append(name)
                if name in previous:
                    good[name] = previous[name]
                    warnings.append(f"{kind} {name}: keeping its last valid version")
        parsed[kind] = good
        invalid[kind] = tuple(sorted(bad))
    affinities = {}
    for cidr in sorted(snapshot.affinities):
        try:
            affinities[cidr] = parse_block_affinity(cidr, snapshot.affinities[cidr])
        except Exception as exc:
            warnings.append(_failure("BlockAffinity", cidr, exc))
    model = Model(
        bgp_configurations=parsed["BGPConfiguration"],
        nodes=parsed["Node"],
        ip_pools=parsed["IPPool"],
        block_affinities=affinities,
        bgp_peers=parsed["BGPPeer"],
        bgp_filters=parsed["BGPFilter"],
        invalid=invalid,
    )
    return model, warnings
