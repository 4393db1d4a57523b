"""The ``status`` of a CalicoNodeStatus resource, built from the daemon's own state.

Stage: observability, pure. ``bgp.nodestatus_writer`` calls ``build_status`` with what ``calico-bgp
status`` and ``calico-bgp routes`` show (peer statuses, the Loc-RIB report, the intent) and writes the
result into the resource.

Owns: the mapping onto Calico's status shape (v3.22+ ``CalicoNodeStatusStatus``): ``lastUpdated``;
``agent.birdV4`` / ``birdV6`` {state, version, routerID, lastBootTime, lastReconfigurationTime};
``bgp`` {numberEstablishedV4/V6, numberNotEstablishedV4/V6, peersV4/V6 [{peerIP, type, state, since}]};
``routes`` {routesV4/V6 [{type, destination, gateway, interface, learnedFrom {sourceType, peerIP}}]}.
Only the requested classes are filled; the others are left out.

Complicating factors:
- Calico has one BIRD per family; here one ExaBGP speaks both, so ``birdV4`` and ``birdV6`` describe the
  same process (``birdV6`` only when the node has an IPv6 address, as Calico runs bird6 only then).
- Words are Calico's: peer types ``NodeMesh``/``GlobalPeer``/``NodePeer``; session states are RFC 4271's,
  so our BIRD-style ``Passive`` (waiting for the peer to connect) is reported as ``Active``; route types
  ``FIB`` (in the kernel) or ``RIB`` (known, not installed); sources ``NodeMesh``/``BGPPeer`` for learned
  routes, ``Static`` for our blocks (blackholes, as BIRD's static protocol has them) and service ranges,
  ``Kernel`` for workload routes Felix put in the kernel. Fields Calico leaves empty are omitted, as its
  JSON does (``omitempty``): a route's interface when the kernel chose it, a gateway-less route's
  ``N/A`` is kept because Calico writes that literally.
- Times: ``lastUpdated`` is RFC 3339 UTC; the agent times use BIRD's ``YYYY-MM-DD HH:MM:SS`` and a peer's
  ``since`` BIRD's rule (time of day if today, else the date), both in UTC so that a node's output does
  not depend on its time zone.
- The whole object must stay well inside what one etcd value may hold and what our own syncer decodes
  (``MAX_VALUE_BYTES``): at most ``MAX_LIST`` peers and routes per family are listed (the counts stay
  complete), and ``omitted`` says how many were left out.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bgp.build_info import package_version
from bgp.status import PeerStatus
from confgen.intent import GLOBAL, MESH, NODE_SPECIFIC, NodeIntent

# 400 IPv6 routes of ~230 bytes, 400 IPv4 routes, 400 peers of each family and the metadata stay under
# 240 KB, below the 256 KiB a value may have (confgen.datastore.base.MAX_VALUE_BYTES).
MAX_LIST = 400

PEER_TYPES = {MESH: "NodeMesh", GLOBAL: "GlobalPeer", NODE_SPECIFIC: "NodePeer"}
# Our session states (BIRD's words) in RFC 4271's, which Calico's API admits.
SESSION_STATES = {
    "Idle": "Idle",
    "Connect": "Connect",
    "Active": "Active",
    "Passive": "Active",
    "OpenSent": "OpenSent",
    "OpenConfirm": "OpenConfirm",
    "Established": "Established",
}
NOT_APPLICABLE = "N/A"


@dataclass(frozen=True)
class AgentState:
    """What ``agent`` reports about the BGP engine (ExaBGP under this daemon)."""

    ready: bool  # ExaBGP runs with its API connection
    version: str
    boot_time: float | None = None  # wall clock of ExaBGP's last start
    reconfig_time: float | None = None  # wall clock of the last config reload (the start, before any)


@dataclass(frozen=True)
class StatusInputs:
    agent: AgentState
    intent: NodeIntent | None
    peers: tuple[PeerStatus, ...] = ()
    routes: tuple[Mapping[str, Any], ...] = ()  # rows of the Loc-RIB report (bgp.routes_view)
    interfaces: Mapping[str, str] = field(default_factory=dict)  # prefix -> kernel device, when known


@dataclass(frozen=True)
class BuiltStatus:
    status: dict[str, Any]
    omitted: int = 0  # peers and routes left out by MAX_LIST


@functools.cache  # installed versions do not change while we run
def agent_version() -> str:
    """``calico-bgp <version>+exabgp<version>``, shaped like calico-node's ``<confd>+bird<version>``."""
    return f"calico-bgp {package_version('calico-bgp')}+exabgp{package_version('exabgp')}"


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def bird_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def bird_since(ts: float, now: float) -> str:
    if time.gmtime(ts)[:3] == time.gmtime(now)[:3]:
        return time.strftime("%H:%M:%S", time.gmtime(ts))
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def build_status(classes: Iterable[str], inputs: StatusInputs, now: float) -> BuiltStatus:
    """The ``status`` object for one request: ``lastUpdated`` plus the requested classes."""
    status: dict[str, Any] = {"lastUpdated": rfc3339(now)}
    omitted = 0
    wanted = set(classes)
    if "Agent" in wanted:
        status["agent"] = _agent(inputs.agent, inputs.intent)
    if "BGP" in wanted:
        status["bgp"], dropped = _bgp(inputs.peers, now)
        omitted += dropped
    if "Routes" in wanted:
        status["routes"], dropped = _routes(inputs.routes, inputs.intent, inputs.interfaces)
        omitted += dropped
    return BuiltStatus(status, omitted)


def _agent(agent: AgentState, intent: NodeIntent | None) -> dict[str, Any]:
    daemon: dict[str, Any] = {"state": "Ready" if agent.ready and intent is not None else "NotReady"}
    daemon["version"] = agent.version
    if intent is not None and intent.router_id:
        daemon["routerID"] = intent.router_id
    if agent.boot_time is not None:
        daemon["lastBootTime"] = bird_time(agent.boot_time)
        reconfigured = agent.reconfig_time if agent.reconfig_time is not None else agent.boot_time
        daemon["lastReconfigurationTime"] = bird_time(reconfigured)
    out = {"birdV4": daemon}
    if intent is not None and intent.ipv6_address:
        out["birdV6"] = dict(daemon)
    return out


def _bgp(peers: Iterable[PeerStatus], now: float) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    listed: dict[str, list[dict[str, str]]] = {"V4": [], "V6": []}
    dropped = 0
    for suffix, family in (("V4", "ipv4"), ("V6", "ipv6")):
        mine = [p for p in peers if p.family == family]
        established = sum(1 for p in mine if p.established)
        out[f"numberEstablished{suffix}"] = established
        out[f"numberNotEstablished{suffix}"] = len(mine) - established
        for peer in mine[:MAX_LIST]:
            entry = {"peerIP": peer.address}
            if peer.type in PEER_TYPES:
                entry["type"] = PEER_TYPES[peer.type]
            state = SESSION_STATES.get(peer.bgp_state, "")
            if state:  # Calico: an empty state means unknown, and is left out
                entry["state"] = state
            entry["since"] = bird_since(peer.since, now)
            listed[suffix].append(entry)
        dropped += max(0, len(mine) - MAX_LIST)
    for suffix, entries in listed.items():
        if entries:
            out[f"peers{suffix}"] = entries
    return out, dropped


def _routes(
    rows: Iterable[Mapping[str, Any]], intent: NodeIntent | None, interfaces: Mapping[str, str]
) -> tuple[dict[str, Any], int]:
    mesh = {p.address for p in intent.peers if p.kind == MESH} if intent is not None else set()
    blocks = set(intent.local_blocks) if intent is not None else set()
    services: set[str] = set()
    if intent is not None:
        services.update(intent.service_cluster_ips, intent.service_external_ips)
        services.update(intent.service_loadbalancer_ips)
    listed: dict[str, list[dict[str, Any]]] = {"V4": [], "V6": []}
    dropped = 0
    for row in rows:
        prefix = str(row.get("prefix", ""))
        suffix = "V6" if ":" in prefix else "V4"
        if len(listed[suffix]) >= MAX_LIST:
            dropped += 1
            continue
        installed = bool((row.get("kernel") or {}).get("installed"))
        route: dict[str, Any] = {"type": "FIB" if installed else "RIB", "destination": prefix}
        if row.get("origin") == "local":
            route["gateway"] = NOT_APPLICABLE
            if prefix in blocks:
                # Our blocks are blackholes in the kernel, as BIRD's static protocol installs them.
                route.update(type="FIB", interface="blackhole", learnedFrom={"sourceType": "Static"})
            elif prefix in services:
                route["learnedFrom"] = {"sourceType": "Static"}
            else:
                route.update(type="FIB", learnedFrom={"sourceType": "Kernel"})  # Felix's workload route
        else:
            best = row.get("best") or {}
            peer = str(best.get("learned_from", ""))
            route["gateway"] = str(best.get("nexthop", "")) or NOT_APPLICABLE
            if interfaces.get(prefix):
                route["interface"] = interfaces[prefix]
            source = "NodeMesh" if peer in mesh else "BGPPeer"
            route["learnedFrom"] = {"sourceType": source, "peerIP": peer} if peer else {"sourceType": source}
        listed[suffix].append(route)
    return {f"routes{suffix}": entries for suffix, entries in listed.items() if entries}, dropped
