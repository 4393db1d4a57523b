"""BGPPeer resources: parsing and validation into a frozen value.

Stage: part of the model (``confgen.model.parse_snapshot``); ``confgen.peering`` expands the values into
sessions for one node.

Owns: ``BGPPeer`` and ``parse_bgp_peer``, i.e. every rule about a single BGPPeer that does not need to
look at other resources (those belong to ``confgen.peering``).

Complicating factors:
- ``peerIP`` has three shapes: ``10.0.0.1``, ``10.0.0.1:1790`` and ``[fd00::1]:1790``. A bare IPv6
  address is never split on its last colon (``fd00::1:179`` is an address), which is what Go's
  ``net.SplitHostPort`` does for confd.
- Calico's own validator allows combinations confd cannot render (a peerIP without asNumber gives
  ``as 0``); those are refused here with a message instead of producing a broken session.
- ``localWorkloadSelector`` peers come from Felix's endpoint-status files, which an etcd-only node does
  not have: such a BGPPeer is reported as unsupported rather than silently ignored.
- Durations are bounded by what BGP can carry: a graceful-restart time has 12 bits (4095 s), a long-lived
  stale time 24 bits, and the hold time (``holdTime``, or 3 x keepalive) 16 bits; a hold time is 0 or at
  least 3 s (RFC 4271), and an explicit one must leave room for three keepalives.
- Two fields are extensions Calico does not define (docs/calico-model.md#extensions): ``holdTime`` (as
  MetalLB and Cilium name it) and ``restartMode`` (Calico Enterprise's name and values; with
  ``LongLivedGracefulRestart``, ``maxRestartTime`` is the long-lived stale time, as there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from confgen import addresses
from confgen.selector import Selector
from confgen.validate import NAME_RE, Reader, SecretRef, show

MAX_RESTART_TIME = 4095
MAX_KEEPALIVE_TIME = 65535 // 3
MAX_HOLD_TIME = 65535
MAX_LLGR_STALE_TIME = 2**24 - 1  # RFC 9494: the long-lived stale time has 24 bits
RESTART_MODES = ("GracefulRestart", "LongLivedGracefulRestart")
# Calico Enterprise's values: BFD runs only to a peer on one of our connected subnets (bgp.bfd.gate decides).
FAILURE_DETECTION_MODES = ("None", "BFDIfDirectlyConnected")
NEXT_HOP_MODES = ("Auto", "Self", "Keep")
SOURCE_ADDRESSES = ("UseNodeIP", "None")
REVERSE_PEERING = ("Auto", "Manual")
_BRACKETED_RE = re.compile(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})")
_V4_PORT_RE = re.compile(r"([0-9.]+):([0-9]{1,5})")


@dataclass(frozen=True)
class BGPPeer:
    name: str
    node: str = ""  # this peering applies to one node...
    node_selector: Selector | None = None  # ...or to the nodes selected; neither = every node (global)
    peer_ip: str = ""  # normalised address, "" with peer_selector
    peer_port: int = 0  # 0 = not given (a Calico node's listen port, else 179)
    peer_selector: Selector | None = None  # Calico nodes to peer with
    as_number: int | None = None  # the peer's AS (None with peer_selector: each node's own)
    local_as_number: int | None = None  # overrides our AS on these sessions
    source_address: str = "UseNodeIP"
    password: SecretRef | None = None
    max_restart_time: int | None = None  # seconds
    keepalive_time: int | None = None  # seconds
    hold_time: int | None = None  # seconds (extension: spec.holdTime); None = 3 x keepalive, else the default
    restart_mode: str = "GracefulRestart"  # one of RESTART_MODES; LLGR: max_restart_time is the stale time
    failure_detection_mode: str = "None"  # one of FAILURE_DETECTION_MODES (docs/bfd.md)
    ttl_security: int = 0  # hops; 0 = off
    next_hop_mode: str = ""  # "" = not set; else one of NEXT_HOP_MODES
    keep_original_next_hop: bool = False
    num_allowed_local_as_numbers: int = 0
    filters: tuple[str, ...] = ()
    reverse_peering: str = "Auto"
    reachable_by: str = ""

    @property
    def is_global(self) -> bool:
        return not self.node and self.node_selector is None

    @property
    def peer_family(self) -> str:
        return "ipv6" if ":" in self.peer_ip else "ipv4"


def parse_peer_ip(value: Any) -> tuple[str, int] | None:
    """(normalised address, port or 0) of a peerIP; None if it is not one of the three shapes.

    >>> parse_peer_ip("10.0.0.1:1790"), parse_peer_ip("[FD00::1]:1790"), parse_peer_ip("fd00::1:179")
    (('10.0.0.1', 1790), ('fd00::1', 1790), ('fd00::1:179', 0))
    """
    if not isinstance(value, str) or len(value) > 64:
        return None
    port = 0
    address = value
    if match := _BRACKETED_RE.fullmatch(value):
        address, port = match[1], int(match[2])
        if ":" not in address:
            return None  # brackets are for IPv6 only
    elif match := _V4_PORT_RE.fullmatch(value):
        address, port = match[1], int(match[2])
    if match and not 1 <= port <= 65535:
        return None
    try:
        return addresses.canonical_ip(address), port
    except addresses.AddressError:
        return None


def parse_bgp_peer(name: str, raw: Any) -> BGPPeer:
    r = Reader("BGPPeer", name, raw)
    node = r.name_ref("spec.node", "Node")
    node_selector = r.selector("spec.nodeSelector")
    if node and node_selector is not None:
        raise r.error("spec.node", "must be empty when spec.nodeSelector is set")
    if r.get("spec.localWorkloadSelector", "") != "":
        raise r.error(
            "spec.localWorkloadSelector", "is not supported (it needs Felix's endpoint status files)"
        )

    peer_selector = r.selector("spec.peerSelector")
    raw_peer_ip = r.get("spec.peerIP", "")
    peer_ip, peer_port = "", 0
    if raw_peer_ip != "":
        if peer_selector is not None:
            raise r.error("spec.peerIP", "must be empty when spec.peerSelector is set")
        parsed = parse_peer_ip(raw_peer_ip)
        if parsed is None:
            # Say why when the address itself is the problem (a scope id, a mapped address), not its shape.
            problem = addresses.address_problem(raw_peer_ip)
            reason = f": it {problem}" if problem and not problem.startswith("is not") else ""
            raise r.error(
                "spec.peerIP", f"{show(raw_peer_ip)} is not an IP address (or ip:port, [ipv6]:port){reason}"
            )
        peer_ip, peer_port = parsed
    elif peer_selector is None:
        raise r.error("spec", "needs spec.peerIP or spec.peerSelector")

    as_number = r.as_number("spec.asNumber")
    if peer_selector is not None and as_number is not None:
        raise r.error("spec.asNumber", "must be empty when spec.peerSelector is set (each node's AS is used)")
    if peer_ip and as_number is None:
        raise r.error("spec.asNumber", "is required with spec.peerIP")

    reachable_by = r.ip("spec.reachableBy")
    if reachable_by:
        if not peer_ip:
            raise r.error("spec.reachableBy", "needs spec.peerIP")
        if (":" in reachable_by) != (":" in peer_ip):
            raise r.error("spec.reachableBy", f"{reachable_by} is not in the address family of spec.peerIP")

    filters = []
    for i, filter_name in enumerate(r.items("spec.filters")):
        if not isinstance(filter_name, str) or not NAME_RE.fullmatch(filter_name):
            raise r.error(f"spec.filters[{i}]", f"{show(filter_name)} is not a valid BGPFilter name")
        if filter_name not in filters:
            filters.append(filter_name)

    next_hop_mode = r.get("spec.nextHopMode", "")
    if next_hop_mode != "":
        next_hop_mode = r.choice("spec.nextHopMode", NEXT_HOP_MODES, "Auto")

    restart_mode = r.choice("spec.restartMode", RESTART_MODES, "GracefulRestart")
    keepalive_time = _keepalive(r)
    hold_time = _hold_time(r, keepalive_time)
    return BGPPeer(
        name=name,
        node=node,
        node_selector=node_selector,
        peer_ip=peer_ip,
        peer_port=peer_port,
        peer_selector=peer_selector,
        as_number=as_number,
        local_as_number=r.as_number("spec.localASNumber"),
        source_address=r.choice("spec.sourceAddress", SOURCE_ADDRESSES, "UseNodeIP"),
        password=r.secret_ref("spec.password"),
        max_restart_time=_max_restart_time(r, restart_mode),
        keepalive_time=keepalive_time,
        hold_time=hold_time,
        restart_mode=restart_mode,
        failure_detection_mode=r.choice("spec.failureDetectionMode", FAILURE_DETECTION_MODES, "None"),
        ttl_security=r.integer("spec.ttlSecurity", 0, 255) or 0,
        next_hop_mode=next_hop_mode,
        keep_original_next_hop=bool(r.boolean("spec.keepOriginalNextHop")),
        num_allowed_local_as_numbers=r.integer("spec.numAllowedLocalASNumbers", 0, 255) or 0,
        filters=tuple(filters),
        reverse_peering=r.choice("spec.reversePeering", REVERSE_PEERING, "Auto"),
        reachable_by=reachable_by,
    )


def _keepalive(r: Reader) -> int | None:
    seconds = r.duration("spec.keepaliveTime", MAX_KEEPALIVE_TIME)
    if seconds == 0:
        raise r.error("spec.keepaliveTime", "must be at least 1s")
    return seconds


def _hold_time(r: Reader, keepalive: int | None) -> int | None:
    seconds = r.duration("spec.holdTime", MAX_HOLD_TIME)
    if seconds is None:
        return None
    if seconds in (1, 2):
        raise r.error("spec.holdTime", "must be 0 (no hold timer) or at least 3s")
    if keepalive is not None and seconds == 0:
        raise r.error("spec.keepaliveTime", "must be empty when spec.holdTime is 0 (no keepalives are sent)")
    if keepalive is not None and keepalive > seconds // 3:
        raise r.error(
            "spec.keepaliveTime",
            f"{keepalive}s is more than a third of spec.holdTime {seconds}s (a peer needs three chances)",
        )
    return seconds


def _max_restart_time(r: Reader, restart_mode: str) -> int | None:
    if restart_mode == "GracefulRestart":
        return r.duration("spec.maxRestartTime", MAX_RESTART_TIME)
    seconds = r.duration("spec.maxRestartTime", MAX_LLGR_STALE_TIME)
    if seconds == 0:
        raise r.error("spec.maxRestartTime", "must be at least 1s when spec.restartMode is long-lived")
    return seconds
