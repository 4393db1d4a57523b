"""Typed, validated Calico resources: raw snapshot dicts in, frozen model values (or precise errors) out.

Stage: first half of the pure calculation. ``parse_snapshot`` turns a raw ``Snapshot`` into a ``Model``;
``confgen.calc`` derives the node's intent from that model.

Owns: the resource value types (``BGPConfiguration``, ``Node``, ``IPPool``, ``BlockAffinity``), their
parsing, Calico's defaults where a *resource* defines them, and the validation that keeps hostile or
broken datastore content away from the rendered ExaBGP config.

Complicating factors:
- The etcd datastore has no CRD defaulting: every default Calico's API server would fill in is applied
  here (block sizes, pool modes), and cluster-wide defaults (AS 64512, mesh on, port 179) are resolved by
  ``Model`` because a missing ``default`` BGPConfiguration must behave like an empty one.
- One invalid resource must not take the node down. Each resource is parsed on its own; a failure
  becomes a warning naming kind, name, field and problem, and the resource is skipped, the way confd
  ignores what it cannot convert.
- AS numbers arrive as JSON numbers, decimal strings or asdot strings (``"1.10"`` = 65546).
- Node addresses are in CIDR form (``10.0.0.11/24``): the prefix length is the node's subnet, which
  CrossSubnet routing needs later. A bare IP means a /32.
- Everything that may end up in the rendered config is parsed into a canonical form (``ipaddress``
  normalisation, ints), so nothing a user typed is copied into the config verbatim.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confgen.datastore.base import Snapshot

DEFAULT_AS_NUMBER = 64512
DEFAULT_LISTEN_PORT = 179
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}
BLOCK_SIZE_RANGE = {4: (20, 32), 6: (116, 128)}
ENCAP_MODES = ("Never", "Always", "CrossSubnet")
LOG_SEVERITIES = ("Trace", "Debug", "Info", "Warning", "Error", "Fatal")
AFFINITY_STATES = ("confirmed", "pending", "pendingDeletion")
MAX_AS_NUMBER = 2**32 - 1

# Calico resource names are DNS-1123 subdomains; "node.<nodename>" BGPConfigurations fit the same rule.
# (Always fullmatch: "$" would also match before a trailing newline.)
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_PLAIN_RE = re.compile(r"[A-Za-z0-9._:/-]{1,253}")  # printed bare in messages; anything else via repr()
_ASPLAIN_RE = re.compile(r"[0-9]{1,10}")
_ASDOT_RE = re.compile(r"([0-9]{1,5})\.([0-9]{1,5})")
_MISSING = object()


class ValidationError(ValueError):
    """A resource that cannot be used. The message names kind, name, field and problem."""

    def __init__(self, kind: str, name: str, field: str, problem: str) -> None:
        self.kind, self.name, self.field, self.problem = kind, name, field, problem
        shown = name if _PLAIN_RE.fullmatch(name) else _show(name)
        super().__init__(f"{kind} {shown}: " + " ".join(part for part in (field, problem) if part))


def _show(value: Any) -> str:
    """repr() for messages, cut short: values come from a shared datastore and may be huge or hostile."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class BGPConfiguration:
    """One BGPConfiguration; ``None`` = not set (defaults are resolved by ``Model``)."""

    name: str
    as_number: int | None = None
    node_to_node_mesh_enabled: bool | None = None
    listen_port: int | None = None
    log_severity_screen: str | None = None


@dataclass(frozen=True)
class Node:
    name: str
    ipv4_address: str = ""  # bare IP; "" = none
    ipv4_network: str = ""  # the node's subnet, from the CIDR form
    ipv6_address: str = ""
    ipv6_network: str = ""
    as_number: int | None = None  # None = use the cluster's
    route_reflector_cluster_id: str = ""

    def address(self, family: str) -> str:
        return self.ipv4_address if family == "ipv4" else self.ipv6_address


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

    def _global(self) -> BGPConfiguration:
        return self.bgp_configurations.get("default") or BGPConfiguration("default")

    @property
    def as_number(self) -> int:
        value = self._global().as_number
        return DEFAULT_AS_NUMBER if value is None else value

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
        per_node = self.bgp_configurations.get(f"node.{node}")
        if per_node is not None and per_node.listen_port is not None:
            return per_node.listen_port
        return self.listen_port


class _Reader:
    """Field access into one raw resource, raising ``ValidationError`` with the field's dotted path."""

    def __init__(self, kind: str, name: str, raw: Any) -> None:
        self.kind, self.name, self.raw = kind, name, raw
        if not _NAME_RE.fullmatch(name):
            raise self.error("metadata.name", "is not a valid resource name (DNS-1123 subdomain)")
        if not isinstance(raw, dict):
            raise self.error("", "is not a JSON object")

    def error(self, field: str, problem: str) -> ValidationError:
        return ValidationError(self.kind, self.name, field, problem)

    def get(self, path: str, default: Any = _MISSING) -> Any:
        node: Any = self.raw
        walked = []
        for part in path.split("."):
            if node is None:
                return default
            if not isinstance(node, dict):
                raise self.error(".".join(walked), f"{_show(node)} is not an object")
            walked.append(part)
            node = node.get(part)
        return default if node is None else node

    def boolean(self, path: str) -> bool | None:
        value = self.get(path, None)
        if value is not None and not isinstance(value, bool):
            raise self.error(path, f"{_show(value)} is not a boolean")
        return value

    def integer(self, path: str, low: int, high: int) -> int | None:
        value = self.get(path, None)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(path, f"{_show(value)} is not an integer")
        if not low <= value <= high:
            raise self.error(path, f"{value} is out of range {low}-{high}")
        return value

    def choice(self, path: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(path, "")
        if value == "":
            return default
        if value not in choices:
            raise self.error(path, f"{_show(value)} is not one of {', '.join(choices)}")
        return value

    def as_number(self, path: str) -> int | None:
        value = self.get(path, None)
        if value is None:
            return None
        parsed = parse_as_number(value)
        if parsed is None:
            raise self.error(path, f"{_show(value)} is not an AS number (1-{MAX_AS_NUMBER} or asdot X.Y)")
        return parsed


def parse_as_number(value: Any) -> int | None:
    """An AS number from a JSON number, a decimal string or an asdot string; None if it is none of them.

    >>> parse_as_number("1.10"), parse_as_number(64512), parse_as_number("4200000000")
    (65546, 64512, 4200000000)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if _ASPLAIN_RE.fullmatch(value):
            value = int(value)
        elif match := _ASDOT_RE.fullmatch(value):
            high, low = int(match[1]), int(match[2])
            if high > 0xFFFF or low > 0xFFFF:
                return None
            value = (high << 16) | low
        else:
            return None
    if not isinstance(value, int):
        return None
    # AS 0 is reserved (RFC 7607) and ExaBGP refuses it: treat it as invalid rather than render it.
    return value if 1 <= value <= MAX_AS_NUMBER else None


def parse_bgp_configuration(name: str, raw: Any) -> BGPConfiguration:
    r = _Reader("BGPConfiguration", name, raw)
    severity = r.get("spec.logSeverityScreen", None)
    if severity is not None:
        canonical = {level.lower(): level for level in LOG_SEVERITIES}.get(str(severity).lower())
        if not isinstance(severity, str) or canonical is None:
            choices = ", ".join(LOG_SEVERITIES)
            raise r.error("spec.logSeverityScreen", f"{_show(severity)} is not one of {choices}")
        severity = canonical
    return BGPConfiguration(
        name=name,
        as_number=r.as_number("spec.asNumber"),
        node_to_node_mesh_enabled=r.boolean("spec.nodeToNodeMeshEnabled"),
        listen_port=r.integer("spec.listenPort", 1, 65535),
        log_severity_screen=severity,
    )


def _node_address(r: _Reader, path: str, version: int) -> tuple[str, str]:
    value = r.get(path, "")
    if value == "":
        return "", ""
    try:
        if not isinstance(value, str):
            raise ValueError
        interface = ipaddress.ip_interface(value)
    except ValueError:
        raise r.error(path, f"{_show(value)} is not an IP address or address/prefix") from None
    if interface.version != version:
        raise r.error(path, f"{_show(value)} is not an IPv{version} address")
    return str(interface.ip), interface.network.with_prefixlen


def parse_node(name: str, raw: Any) -> Node:
    r = _Reader("Node", name, raw)
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
                "spec.bgp.routeReflectorClusterID", f"{_show(cluster_id)} is not an IPv4-formatted cluster id"
            ) from None
    return Node(
        name=name,
        ipv4_address=ipv4_address,
        ipv4_network=ipv4_network,
        ipv6_address=ipv6_address,
        ipv6_network=ipv6_network,
        as_number=r.as_number("spec.bgp.asNumber"),
        route_reflector_cluster_id=cluster_id,
    )


def parse_ip_pool(name: str, raw: Any) -> IPPool:
    r = _Reader("IPPool", name, raw)
    cidr = r.get("spec.cidr", None)
    if cidr is None:
        raise r.error("spec.cidr", "is required")
    try:
        if not isinstance(cidr, str):
            raise ValueError
        # Not strict: calicoctl stores the network address anyway, and a stray host bit must not
        # drop a whole pool.
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise r.error("spec.cidr", f"{_show(cidr)} is not an IP network") from None
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
        raise ValidationError("BlockAffinity", cidr, "state", f"{_show(state)} is not one of {choices}")
    deleted = raw.get("deleted") or False
    if not isinstance(deleted, bool):
        raise ValidationError("BlockAffinity", cidr, "deleted", f"{_show(deleted)} is not a boolean")
    return BlockAffinity(cidr=cidr, state=state, deleted=deleted)


_PARSERS = {
    "BGPConfiguration": parse_bgp_configuration,
    "Node": parse_node,
    "IPPool": parse_ip_pool,
}


def parse_snapshot(snapshot: Snapshot) -> tuple[Model, list[str]]:
    """Validate every resource confgen uses; invalid ones are skipped and reported as warnings."""
    warnings = list(snapshot.errors)
    parsed: dict[str, dict[str, Any]] = {}
    for kind, parser in _PARSERS.items():
        parsed[kind] = {}
        raw_by_name = snapshot.resources.get(kind, {})
        for name in sorted(raw_by_name):
            try:
                parsed[kind][name] = parser(name, raw_by_name[name])
            except ValidationError as exc:
                warnings.append(str(exc))
    affinities = {}
    for cidr in sorted(snapshot.affinities):
        try:
            affinities[cidr] = parse_block_affinity(cidr, snapshot.affinities[cidr])
        except ValidationError as exc:
            warnings.append(str(exc))
    model = Model(
        bgp_configurations=parsed["BGPConfiguration"],
        nodes=parsed["Node"],
        ip_pools=parsed["IPPool"],
        block_affinities=affinities,
    )
    return model, warnings
