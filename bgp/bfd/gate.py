"""BFD's hold on BGP: which sessions want BFD, and what a BFD session's state means for its BGP session.

Stage: between the intent and the BFD engine (``wanted_sessions``: the BFD sessions to configure), and
between the engine's reports and ``bgp.sessions`` (``BfdGate``: which BGP peers are held, ``on_bfd_down``:
what a BFD Down does to the session and its paths). Pure: no I/O, no clock.

Owns: the ``BFDIfDirectlyConnected`` rule, the per-peer view of BFD the BGP side acts on (which key serves
each peer, its latest status, the note status shows), and the decision table docs/bfd.md "BFD and BGP"
explains.

Complicating factors:
- "Directly connected" is read from the kernel's interface addresses (what ``routes.addresses`` reports),
  not from the Node resource: a peer on one of their subnets gets BFD, any other peer with the mode set gets
  none, with a one-line note in status (not an error: the same BGPPeer may cover peers of both kinds).
  Link-local and host-length addresses make no subnet (``bgp.import_guard.connected_subnets``).
- The BFD session is sourced from the BGP session's local address: that is the address the peer's BFD
  (bfdd, BIRD) expects, as its BGP neighbour is that address.
- A peer that signals AdminDown has turned BFD off, which is no failure (RFC 5882 section 3.2): the BGP
  session is neither torn down nor held for it. The engine reports that as Down with our diagnostic
  "Neighbor Signaled Session Down" and the peer's "Administratively Down" (RFC 5880 section 6.8.6, 6.8.16).
- Graceful restart (RFC 5882 section 4.3): we send C=0. A peer's C bit says whether its BFD survives its
  control plane restarting. BFD Down on an Established session is a dead path or peer (a peer restarting
  its control plane closes its TCP connection first), so the paths go at once whatever the C bit. BFD
  Down while the peer's graceful restart already runs is explained by that restart when the peer's BFD
  shares its control plane's fate (C=0): the stale paths stay. With C=1 it is not: they go.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bgp.bfd.api import (
    DEFAULT_MIN_RX_MS,
    DEFAULT_MIN_TX_MS,
    DEFAULT_MULTIPLIER,
    DIAGNOSTICS,
    UP,
    BfdPeerConfig,
    BfdStatus,
)
from bgp.import_guard import connected_subnets
from confgen.intent import PeerIntent

Key = tuple[str, str]  # (peer, local), as BfdPeerConfig.key

NO_DIAGNOSTIC = DIAGNOSTICS[0]
NEIGHBOR_SIGNALED_DOWN = DIAGNOSTICS[3]
ADMINISTRATIVELY_DOWN = DIAGNOSTICS[7]

# What a BFD Down does to its BGP session (``on_bfd_down``).
IGNORE = "ignore"  # the peer turned BFD off: nothing happens, and nothing is held
HOLD = "hold"  # no session and no stale paths: the session is only kept from coming up
TEARDOWN = "teardown"  # Established: tear it down, its paths leave the RIB and the kernel at once
FLUSH_STALE = "flush-stale"  # graceful restart running, peer's BFD independent (C=1): stale paths go now
KEEP_STALE = "keep-stale"  # graceful restart running, peer's BFD shares its fate (C=0): they stay

NOT_DIRECTLY_CONNECTED = "off: not directly connected"


@dataclass(frozen=True)
class BfdTimers:
    """The daemon-wide settings (``calico-bgp node run --bfd-*``), in milliseconds as given."""

    min_tx_ms: int = DEFAULT_MIN_TX_MS
    min_rx_ms: int = DEFAULT_MIN_RX_MS
    multiplier: int = DEFAULT_MULTIPLIER

    def __post_init__(self) -> None:
        if self.min_tx_ms <= 0 or self.min_rx_ms <= 0:
            raise ValueError(f"BFD intervals must be positive, not {self.min_tx_ms}/{self.min_rx_ms} ms")
        if not 1 <= self.multiplier <= 255:
            raise ValueError(f"the BFD detection multiplier is 1..255, not {self.multiplier}")


@dataclass(frozen=True)
class Wanted:
    """The BFD sessions to configure, which one serves each BGP peer, and the peers refused one."""

    configs: Mapping[Key, BfdPeerConfig]
    serving: Mapping[str, Key]  # BGP peer address -> its BFD session
    notes: Mapping[str, str]  # BGP peer address -> why it has none although it asked


def wanted_sessions(
    peers: Iterable[PeerIntent], interface_addresses: Iterable[str], timers: BfdTimers | None = None
) -> Wanted:
    """``BFDIfDirectlyConnected``: a BFD session for each peer that asks and sits on a connected subnet."""
    timers = timers or BfdTimers()
    subnets = [ipaddress.ip_network(n) for n in connected_subnets(interface_addresses)]
    configs: dict[Key, BfdPeerConfig] = {}
    serving: dict[str, Key] = {}
    notes: dict[str, str] = {}
    for peer in peers:
        if not peer.bfd:
            continue
        address = ipaddress.ip_address(peer.address)
        if not any(address in net for net in subnets):
            notes[peer.address] = f"{NOT_DIRECTLY_CONNECTED} (no interface subnet holds {peer.address})"
            continue
        config = BfdPeerConfig(
            peer=peer.address,
            local=peer.local_address,
            min_tx_us=timers.min_tx_ms * 1000,
            min_rx_us=timers.min_rx_ms * 1000,
            multiplier=timers.multiplier,
        )
        configs[config.key] = config
        serving[peer.address] = config.key
    return Wanted(configs, serving, notes)


def peer_turned_off(status: BfdStatus) -> bool:
    """The peer signalled AdminDown: it stopped BFD on purpose (RFC 5882 section 3.2: no failure)."""
    return (
        not status.up
        and status.local_diagnostic == NEIGHBOR_SIGNALED_DOWN
        and status.remote_diagnostic == ADMINISTRATIVELY_DOWN
    )


def on_bfd_down(*, established: bool, restarting: bool, control_independent: bool, turned_off: bool) -> str:
    """What a required BFD session leaving Up does to its BGP session (the module docstring says why).

    ``restarting``: the peer's graceful restart runs (its session ended, its paths are kept stale).
    """
    if turned_off:
        return IGNORE
    if established:
        return TEARDOWN
    if restarting:
        return FLUSH_STALE if control_independent else KEEP_STALE
    return HOLD


class BfdGate:
    """The BGP side's view of BFD, per peer address: which peers wait for BFD, and what status says."""

    def __init__(self) -> None:
        self._serving: dict[str, Key] = {}
        self._notes: dict[str, str] = {}
        self._status: dict[Key, BfdStatus] = {}

    def configure(self, wanted: Wanted, statuses: Iterable[BfdStatus]) -> None:
        """The sessions configured now and the engine's status of each (what it says right after
        ``configure``, so a peer is held from the start until its session comes Up)."""
        self._serving = dict(wanted.serving)
        self._notes = dict(wanted.notes)
        keys = set(self._serving.values())
        self._status = {s_key: s for s in statuses if (s_key := (s.peer, s.local)) in keys}

    def update(self, status: BfdStatus) -> tuple[str, BfdStatus | None] | None:
        """Record a change the engine reported: (the BGP peer it serves, its status before), or None when
        it serves none (left the configuration meanwhile)."""
        key = (status.peer, status.local)
        if self._serving.get(status.peer) != key:
            return None
        before = self._status.get(key)
        self._status[key] = status
        return status.peer, before

    def status(self, peer: str) -> BfdStatus | None:
        key = self._serving.get(peer)
        return None if key is None else self._status.get(key)

    def required(self, peer: str) -> bool:
        return peer in self._serving

    def held(self, peer: str) -> bool:
        """BFD is required for ``peer`` and not Up (unless the peer turned it off): no session may run."""
        if peer not in self._serving:
            return False
        status = self.status(peer)
        return status is None or (not status.up and not peer_turned_off(status))

    def hold_note(self, peer: str) -> str | None:
        """What `calico-bgp status` says about a held peer, None when it is not held."""
        if not self.held(peer):
            return None
        status = self.status(peer)
        state = status.state if status else "Down"
        diagnostic = status.local_diagnostic if status else NO_DIAGNOSTIC
        why = f" ({diagnostic})" if diagnostic != NO_DIAGNOSTIC else ""
        return f"BFD {state}{why}: session held until BFD is Up"

    def report(self, peer: str) -> dict | None:
        """The ``bfd`` object of a peer in `calico-bgp status -o json`; None for a peer without BFD."""
        note = self._notes.get(peer)
        if note is not None:
            return {"state": "Off", "note": note}
        if peer not in self._serving:
            return None
        status = self.status(peer)
        if status is None:
            return {"state": "Down", "held": True}
        report: dict[str, object] = {
            "state": status.state,
            "local": status.local,
            "local_discriminator": status.local_discriminator,
            "remote_discriminator": status.remote_discriminator,
            "tx_interval_ms": status.tx_interval_us / 1000,
            "detection_time_ms": status.detection_time_us / 1000,
            "remote_multiplier": status.remote_multiplier,
            "local_diagnostic": status.local_diagnostic,
            "remote_diagnostic": status.remote_diagnostic,
            "remote_control_independent": status.remote_control_independent,
            "downs": status.downs,
            "held": self.held(peer),
        }
        if status.error:
            report["error"] = status.error
        return report


def cell(report: dict | None) -> str:
    """The BFD column of `calico-bgp status` for one peer's ``bfd`` object."""
    if report is None:
        return ""
    state = str(report.get("state", ""))
    if state == "Off":
        return NOT_DIRECTLY_CONNECTED
    diagnostic = report.get("local_diagnostic") or NO_DIAGNOSTIC
    if state == UP or diagnostic == NO_DIAGNOSTIC:
        return state
    return f"{state} ({diagnostic})"
