"""BGPConfiguration resources: the cluster's ``default`` and the per-node ``node.<name>`` overrides.

Stage: part of the model (``confgen.model.parse_snapshot``); ``confgen.model.Model`` resolves defaults
and overrides, ``confgen.calc`` puts the result into the intent.

Owns: ``BGPConfiguration`` and ``parse_bgp_configuration``, including the resolution of community names
in prefixAdvertisements.

Complicating factors:
- Only ``default`` and ``node.<nodename>`` are meaningful names; confd ignores anything else, we report it.
- Community names in prefixAdvertisements resolve against the same resource's ``communities``; Calico's
  validator rejects unknown names and defined-but-unused communities, and so do we. The resolved lists
  are split into standard and large communities, sorted and deduplicated (confd's ``bgpPrefix`` form).
- nodeMeshMaxRestartTime is a graceful-restart time, which BGP carries in 12 bits (at most 4095 s).
- nodeMeshHoldTime is an extension Calico does not define (docs/calico-model.md#extensions): the mesh's
  hold time, 0 or 3..65535 s as BGP allows.
- nodeMeshFailureDetectionMode is one too: BGPPeer failureDetectionMode's values for the mesh (docs/bfd.md).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from confgen.intent import PrefixAdvertisement
from confgen.validate import NAME_RE, Reader, SecretRef, parse_community, show

LOG_SEVERITIES = ("Trace", "Debug", "Info", "Warning", "Error", "Fatal", "None")  # None: no log at all
BIND_MODES = ("None", "NodeIP")
MAX_RESTART_TIME = 4095  # the graceful-restart capability carries 12 bits of seconds (RFC 4724)
MAX_HOLD_TIME = 65535  # the OPEN's hold time has 16 bits (RFC 4271)
MESH_FAILURE_DETECTION_MODES = ("None", "BFDIfDirectlyConnected")  # BGPPeer failureDetectionMode's values


@dataclass(frozen=True)
class BGPConfiguration:
    """One BGPConfiguration; ``None`` = not set (defaults are resolved by ``Model``)."""

    name: str
    as_number: int | None = None
    node_to_node_mesh_enabled: bool | None = None
    listen_port: int | None = None
    log_severity_screen: str | None = None
    bind_mode: str | None = None
    node_mesh_password: SecretRef | None = None
    node_mesh_max_restart_time: int | None = None  # seconds
    node_mesh_hold_time: int | None = None  # seconds (extension); None = the default
    node_mesh_failure_detection_mode: str | None = None  # extension; None = not set ("None")
    prefix_advertisements: tuple[PrefixAdvertisement, ...] | None = None  # None = not set
    service_cluster_ips: tuple[str, ...] = ()
    service_external_ips: tuple[str, ...] = ()
    service_loadbalancer_ips: tuple[str, ...] = ()
    program_cluster_routes: str | None = None  # v3.32 Enabled|Disabled, v3.33 also EnabledIPIPOnly|...


PROGRAM_CLUSTER_ROUTES = ("Enabled", "Disabled", "EnabledIPIPOnly", "EnabledNoEncapOnly")


def parse_bgp_configuration(name: str, raw: Any) -> BGPConfiguration:
    r = Reader("BGPConfiguration", name, raw)
    if name != "default" and not name.startswith("node."):
        raise r.error("metadata.name", "must be 'default' or 'node.<nodename>'")
    severity = r.get("spec.logSeverityScreen", None)
    if severity is not None:
        canonical = {level.lower(): level for level in LOG_SEVERITIES}.get(str(severity).lower())
        if not isinstance(severity, str) or canonical is None:
            choices = ", ".join(LOG_SEVERITIES)
            raise r.error("spec.logSeverityScreen", f"{show(severity)} is not one of {choices}")
        severity = canonical
    bind_mode = r.get("spec.bindMode", None)
    if bind_mode is not None:
        bind_mode = r.choice("spec.bindMode", BIND_MODES, "None")
    program = r.get("spec.programClusterRoutes", None)
    if program is not None:
        program = r.choice("spec.programClusterRoutes", PROGRAM_CLUSTER_ROUTES, "Enabled")
    return BGPConfiguration(
        name=name,
        as_number=r.as_number("spec.asNumber"),
        node_to_node_mesh_enabled=r.boolean("spec.nodeToNodeMeshEnabled"),
        listen_port=r.integer("spec.listenPort", 1, 65535),
        log_severity_screen=severity,
        bind_mode=bind_mode,
        node_mesh_password=r.secret_ref("spec.nodeMeshPassword"),
        node_mesh_max_restart_time=r.duration("spec.nodeMeshMaxRestartTime", MAX_RESTART_TIME),
        node_mesh_hold_time=_hold_time(r),
        node_mesh_failure_detection_mode=_mesh_failure_detection(r),
        prefix_advertisements=_prefix_advertisements(r),
        service_cluster_ips=_service_ranges(r, "spec.serviceClusterIPs"),
        service_external_ips=_service_ranges(r, "spec.serviceExternalIPs"),
        service_loadbalancer_ips=_service_ranges(r, "spec.serviceLoadBalancerIPs"),
        program_cluster_routes=program,
    )


def _hold_time(r: Reader) -> int | None:
    seconds = r.duration("spec.nodeMeshHoldTime", MAX_HOLD_TIME)
    if seconds in (1, 2):
        raise r.error("spec.nodeMeshHoldTime", "must be 0 (no hold timer) or at least 3s")
    return seconds


def _mesh_failure_detection(r: Reader) -> str | None:
    if r.get("spec.nodeMeshFailureDetectionMode", None) is None:
        return None
    return r.choice("spec.nodeMeshFailureDetectionMode", MESH_FAILURE_DETECTION_MODES, "None")


def _service_ranges(r: Reader, path: str) -> tuple[str, ...]:
    cidrs = set()
    for i, item in enumerate(r.items(path)):
        if not isinstance(item, dict):
            raise r.error(f"{path}[{i}]", f"{show(item)} is not an object")
        cidrs.add(r.cidr(f"{path}[{i}].cidr", item.get("cidr")))
    return tuple(sorted(cidrs, key=lambda c: (":" in c, ipaddress.ip_network(c))))


def _prefix_advertisements(r: Reader) -> tuple[PrefixAdvertisement, ...] | None:
    defined: dict[str, tuple[str, str]] = {}
    for i, item in enumerate(r.items("spec.communities")):
        path = f"spec.communities[{i}]"
        if not isinstance(item, dict):
            raise r.error(path, f"{show(item)} is not an object")
        name, value = item.get("name"), item.get("value")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name.lower()) or len(name) > 63:
            raise r.error(f"{path}.name", f"{show(name)} is not a valid community name")
        parsed = parse_community(value)
        if parsed is None:
            raise r.error(f"{path}.value", f"{show(value)} is not a community (aa:nn or aa:nn:mm)")
        defined[name] = parsed
    raw_list = r.get("spec.prefixAdvertisements", None)
    if raw_list is None:
        if defined:
            raise r.error("spec.communities", "are defined but not used in spec.prefixAdvertisements")
        return None
    advertisements = []
    for i, item in enumerate(r.items("spec.prefixAdvertisements")):
        path = f"spec.prefixAdvertisements[{i}]"
        if not isinstance(item, dict):
            raise r.error(path, f"{show(item)} is not an object")
        cidr = r.cidr(f"{path}.cidr", item.get("cidr"))
        standard: set[str] = set()
        large: set[str] = set()
        communities = item.get("communities") or []
        if not isinstance(communities, list):
            raise r.error(f"{path}.communities", f"{show(communities)} is not a list")
        for j, community in enumerate(communities):
            named = defined.get(community) if isinstance(community, str) else None
            parsed = parse_community(community) or named
            if parsed is None:
                problem = f"{show(community)} is not a community (aa:nn, aa:nn:mm) or a defined name"
                raise r.error(f"{path}.communities[{j}]", problem)
            (standard if parsed[0] == "standard" else large).add(parsed[1])
        standard_sorted = tuple(sorted(standard, key=_numeric))
        advertisements.append(PrefixAdvertisement(cidr, standard_sorted, tuple(sorted(large, key=_numeric))))
    return tuple(advertisements)


def _numeric(community: str) -> tuple[int, ...]:
    return tuple(int(part) for part in community.split(":"))


