"""BGP sessions as ExaBGP reports them: per-peer state, graceful restart, and the Adj-RIB-In they feed.

Stage: the receive side of the route distributor (``bgp.speaker`` drives it). Inputs: the configured peers,
ExaBGP's parsed events (``bgp.exabgp.events``), ExaBGP's own availability, and the clock. Outputs: the
prefixes whose paths changed (returned, for the speaker to select again), session starts and ends told to
the Adj-RIB-Out (``bgp.adj_rib_out``), and the teardown commands owed to peers over their prefix limit.

Owns: the configured peers, each peer's status (``bgp.status.PeerStatus``), its last OPEN, whether it sent
End-of-RIB since we started, the receive-side guards' per-peer state (``bgp.limits``; the import screen is
shared with selection and only told what to forget here), and graceful-restart bookkeeping (``bgp.graceful``,
over the shared Adj-RIB-In).

Complicating factors:
- Graceful restart (RFC 4724), receive side: a peer that offered it keeps its paths (stale) for its restart
  time when the session drops; its End-of-RIB sweeps what it did not re-announce. Without it, the paths go
  at once. The restart time is the one both sides agreed on, read from the OPEN that preceded the session.
  A peer in long-lived mode (RFC 9494, ``bgp.llgr``) then keeps them as LLGR-stale for its stale time.
- What ExaBGP holds is rebuilt, never audited or replayed: whenever it is in doubt (restarted, hung, its API
  connection lost) every session counts as down (received paths kept stale where graceful restart allows),
  and status says Idle with the first reason given until ExaBGP answers again.
- A peer is not trusted with our memory: crossing its prefix cap tears the session down and holds the peer
  idle, its paths going at once (no restart); an over-long AS_PATH is treated as a withdraw (RFC 7606).
- Events can name a neighbour we no longer configure (a reload in flight): they are ignored.
- BFD (``bgp.bfd.gate``): a peer whose BFD session is required is held while it is not Up, as the prefix
  limit holds one; BFD Down tears an Established session down and drops its paths at once, and during a
  graceful restart the peer's C bit decides whether its stale paths stay (docs/bfd.md "BFD and BGP").
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from ipaddress import ip_address

from bgp import llgr
from bgp.adj_rib_out import AdjRibOut
from bgp.bfd import gate as bfd_gate
from bgp.bfd.api import BfdStatus
from bgp.exabgp import events as ev
from bgp.graceful import GracefulRestarts
from bgp.import_guard import ImportScreen
from bgp.limits import CEASE_BFD_DOWN, CEASE_MAX_PREFIXES, LogBudget, PeerLimits, teardown_command
from bgp.rib import AdjRibIn, Path
from bgp.status import PeerStatus
from confgen.intent import PeerIntent

log = logging.getLogger(__name__)


def display_order(address: str) -> tuple[int, int]:
    """By address, IPv4 before IPv6 (within a peer family: ``calicoctl node status``'s order)."""
    parsed = ip_address(address)
    return parsed.version, int(parsed)


class Sessions:
    def __init__(
        self,
        *,
        rib: AdjRibIn,
        out: AdjRibOut,
        screen: ImportScreen,
        limits: PeerLimits,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self._rib = rib
        self._out = out
        self._screen = screen
        self.limits = limits
        self._clock = clock
        self._wallclock = wallclock
        self._peers: dict[str, PeerIntent] = {}
        self._status: dict[str, PeerStatus] = {}
        self._offers: dict[str, ev.Open] = {}  # the peer's last OPEN
        self._graceful = GracefulRestarts(rib)  # receive-side restart timers over the Adj-RIB-In
        self._synced: set[str] = set()  # peers whose End-of-RIB we have seen since we started
        self._teardowns: dict[str, int] = {}  # peer -> Cease subcode, waiting for the next flush
        self.bfd = bfd_gate.BfdGate()  # which peers BFD holds (bgp.bfd.gate), set by the daemon's wiring
        self.malformed_withdraws: dict[str, int] = {}  # peer -> prefixes treated as withdrawn (RFC 7606)
        self._malformed_log = LogBudget(log, clock=clock)
        self._exabgp_down: str | None = None  # why ExaBGP cannot be used, while it cannot

    # ------------------------------------------------------------------ configuration

    @property
    def peers(self) -> Mapping[str, PeerIntent]:
        return self._peers

    def configure(self, wanted: Mapping[str, PeerIntent]) -> None:
        """The configured peers, by address: a peer that left is forgotten with its paths; the others keep
        their sessions and take their new settings."""
        for address in list(self._status):
            if address not in wanted:
                self._forget(address)
        now = self._wallclock()
        statuses: dict[str, PeerStatus] = {}
        # In display order (family, then address), once per intent: status and the metrics read them after
        # every flush, and replacing a value keeps its place.
        for address in sorted(wanted, key=lambda a: (wanted[a].family, display_order(a))):
            peer, status = wanted[address], self._status.get(address)
            statuses[address] = (
                PeerStatus.configured(peer, now) if status is None else status.reconfigured(peer)
            )
        self._status = statuses
        self._peers = dict(wanted)

    def _forget(self, address: str) -> None:
        del self._status[address]
        self._synced.discard(address)
        self._offers.pop(address, None)
        self._graceful.forget(address)
        for prefix in self._rib.drop_peer(address):
            if not self._rib.paths(prefix):
                self._screen.forget(prefix)  # a refused prefix is in no Loc-RIB to be revisited
        self.limits.forget(address)
        self.malformed_withdraws.pop(address, None)
        self._teardowns.pop(address, None)
        self._out.forget(address)

    # ------------------------------------------------------------------ ExaBGP itself

    def exabgp_down(self, reason: str) -> set[str]:
        """ExaBGP is gone, hung or in doubt: every session is down (graceful restart decides what its paths
        become), and status says Idle with the first reason given until ``exabgp_up``."""
        reason = self._exabgp_down = self._exabgp_down or reason
        self._out.exabgp_lost()
        changed: set[str] = set()
        now = self._wallclock()
        for address, status in list(self._status.items()):
            if status.state != "start" or status.bgp_state == "OpenSent":
                changed |= self._peer_down(address, reason)
            status = self._status[address]
            since = status.since if status.bgp_state == "Idle" else now
            self._status[address] = replace(
                status, state="start", bgp_state="Idle", since=since, last_error=reason
            )
        return changed

    def exabgp_up(self) -> None:
        """ExaBGP answers on its API again: sessions wait for their peers (why they went down stays)."""
        reason, self._exabgp_down = self._exabgp_down, None
        now = self._wallclock()
        for address, status in list(self._status.items()):
            if status.bgp_state == "Idle" and status.last_error == reason:
                waiting = "Passive" if status.passive else "Active"
                self._status[address] = replace(status, bgp_state=waiting, since=now)

    # ------------------------------------------------------------------ events

    def handle(self, event: ev.Event) -> set[str] | None:
        """Fold one event in: the prefixes whose paths changed, None when it concerns no configured peer."""
        peer = getattr(event, "peer", "")
        if peer not in self._status:
            return None  # a neighbour we no longer configure (reload in flight), or ExaBGP's own notices
        changed: set[str] = set()
        if isinstance(event, ev.PeerState):
            changed = self._peer_state(event)
        elif isinstance(event, ev.RoutesLearned):
            changed = self._learned(event)
        elif isinstance(event, ev.RoutesWithdrawn):
            if event.malformed:
                self.malformed_withdraws[peer] = self.malformed_withdraws.get(peer, 0) + len(event.prefixes)
                self._malformed_log.warning(
                    "peer %s: %d prefixes treated as withdrawn (RFC 7606): %s",
                    peer, len(event.prefixes), event.malformed,
                )
            changed = {prefix for prefix in event.prefixes if self._rib.remove(peer, prefix)}
        elif isinstance(event, ev.EndOfRib):
            self._synced.add(peer)
            changed = self._graceful.end_of_rib(peer, ipv6=event.family.startswith("ipv6"))
        elif isinstance(event, ev.Open) and event.direction == "receive":
            self._offers[peer] = event
        elif isinstance(event, ev.Notification):
            self._status[peer] = self._status[peer].with_error(event, self._wallclock())
        return changed

    def _peer_state(self, event: ev.PeerState) -> set[str]:
        status = self._status[event.peer]
        now = self._wallclock()
        if event.state == ev.STATE_UP and self.limits.held(event.peer):
            self._teardowns[event.peer] = CEASE_MAX_PREFIXES  # back too soon after crossing its prefix limit
            return set()
        if event.state == ev.STATE_UP and self.bfd.held(event.peer):
            self._teardowns[event.peer] = CEASE_BFD_DOWN  # never up while its required BFD is not
            return set()
        if event.state == ev.STATE_UP:
            self._status[event.peer] = status.up(now)
            # The OPEN of this session came just before: it says whether the peer kept its forwarding state.
            restart_time = self._graceful_restart_time(event.peer)
            self._out.session_up(event.peer)
            return self._graceful.session_up(event.peer, restart_time, self._clock())
        if event.state == ev.STATE_DOWN:
            return self._peer_down(event.peer, event.reason)
        if event.state == ev.STATE_CONNECTED:
            self._status[event.peer] = status.connected(now)
        return set()

    def _graceful_restart_time(self, peer: str) -> int:
        """The restart time both sides agreed on, 0 when graceful restart was not negotiated."""
        offer = self._offers.get(peer)
        intent = self._peers.get(peer)
        if offer is None or offer.restart_time is None or intent is None or not intent.restart_time:
            return 0
        return offer.restart_time

    def _peer_down(self, peer: str, reason: str) -> set[str]:
        self._status[peer] = self._status[peer].down(reason, self._wallclock())
        self._out.session_down(peer)
        # The last OPEN is the ending session's: a new one arrives only with the next attempt.
        restart_time = self._graceful_restart_time(peer)
        return self._graceful.session_down(peer, restart_time, self._clock(), self._llgr_stale_time(peer))

    def _llgr_stale_time(self, peer: str) -> int:
        """The long-lived stale time after the restart time (0: none): ours, capped by the peer's offer."""
        intent, offer = self._peers.get(peer), self._offers.get(peer)
        if intent is None or offer is None:
            return 0  # never established: no paths to keep
        return llgr.stale_time(intent.llgr_stale_time, intent.family, offer.llgr)

    def _learned(self, event: ev.RoutesLearned) -> set[str]:
        if self.limits.held(event.peer) or (self.bfd.held(event.peer) and not self.established(event.peer)):
            # Torn down (prefix limit, BFD not Up): nothing it sends counts until the hold ends. A session
            # that was up before its BFD was asked for runs on until BFD has been Up once (RFC 5882 3.2).
            return set()
        if self.limits.as_path_too_long(event.peer, len(event.attributes.as_path), len(event.prefixes)):
            # treat-as-withdraw (RFC 7606)
            return {prefix for prefix in event.prefixes if self._rib.remove(event.peer, prefix)}
        offer = self._offers.get(event.peer)
        router_id = offer.router_id if offer else ""
        ebgp = not self._peers[event.peer].ibgp
        changed = set()
        # Shared by every path with the same values: the decoder makes new ones for each UPDATE.
        peer, nexthop = sys.intern(event.peer), sys.intern(event.nexthop)
        attributes = self._rib.shared(event.attributes)
        for prefix in event.prefixes:
            path = Path(
                prefix=prefix,
                peer=peer,
                nexthop=nexthop,
                attributes=attributes,
                ebgp=ebgp,
                peer_router_id=router_id,
            )
            if self._rib.add(path):
                changed.add(prefix)
        count = self._rib.count(event.peer)
        if self.limits.exceeded(count):
            changed |= self._prefix_limit_crossed(event.peer, count)
        return changed

    def _prefix_limit_crossed(self, peer: str, count: int) -> set[str]:
        """Tear the session down and forget the peer's paths: not kept stale, this is no restart."""
        self.limits.trip(peer, count)
        note = f"Prefix limit: {self.limits.settings.max_prefixes} exceeded ({count} prefixes)"
        return self._tear_down(peer, CEASE_MAX_PREFIXES, note)

    def _tear_down(self, peer: str, subcode: int, note: str) -> set[str]:
        """End the session through ExaBGP and drop the peer's paths at once: no restart, nothing stale."""
        self._teardowns[peer] = subcode
        dropped = self._rib.drop_peer(peer)
        self._graceful.forget(peer)
        self._out.session_down(peer)
        # Not Established for us from now on: nothing more is queued for it in ExaBGP (see bgp.adj_rib_out).
        self._status[peer] = replace(
            self._status[peer], state="start", bgp_state="Idle", since=self._wallclock(), last_error=note
        )
        return set(dropped)

    # ------------------------------------------------------------------ BFD

    def bfd_configured(self, wanted: bfd_gate.Wanted, statuses: list[BfdStatus]) -> None:
        """The BFD sessions the daemon configured (``bgp.bfd.gate.wanted_sessions``) and their status."""
        self.bfd.configure(wanted, statuses)

    def bfd_changed(self, status: BfdStatus) -> set[str]:
        """A BFD session changed state: the prefixes whose paths changed (``bgp.bfd.gate.on_bfd_down``)."""
        seen = self.bfd.update(status)
        if seen is None or seen[0] not in self._status:
            return set()
        peer, before = seen
        if status.up:
            log.info("peer %s: BFD Up, its session may come up", peer)
            return set()
        if before is not None and not before.up:
            return set()  # Down to Down (a new diagnostic), Init to Down: the session is held already
        action = bfd_gate.on_bfd_down(
            established=self.established(peer),
            restarting=self._graceful.restart(peer) is not None,
            control_independent=status.remote_control_independent,
            turned_off=bfd_gate.peer_turned_off(status),
        )
        log.warning("peer %s: BFD %s (%s): %s", peer, status.state, status.local_diagnostic, action)
        if action == bfd_gate.TEARDOWN:
            return self._tear_down(peer, CEASE_BFD_DOWN, f"BFD Down ({status.local_diagnostic})")
        if action == bfd_gate.FLUSH_STALE:
            self._graceful.forget(peer)
            return self._rib.drop_peer(peer)
        return set()

    # ------------------------------------------------------------------ timers and output

    def expire(self, now: float) -> set[str]:
        """Graceful-restart expiry: the prefixes whose stale paths the restart timers swept."""
        return self._graceful.expire(now)

    def take_teardowns(self) -> list[str]:
        """The teardown commands owed since the last call."""
        lines = [line for line in map(teardown_command, self._teardowns, self._teardowns.values()) if line]
        self._teardowns.clear()
        return lines

    # ------------------------------------------------------------------ views

    def established(self, peer: str) -> bool:
        status = self._status.get(peer)
        return status is not None and status.established

    def all_synced(self) -> bool:
        """Every configured peer has sent End-of-RIB since we started."""
        return self._synced >= self._status.keys()

    def statuses(self) -> list[PeerStatus]:
        """Each peer's status, IPv4 before IPv6 and by address within a family, a peer held for its prefix
        limit or for BFD shown Idle with the reason."""
        return [self._held_view(s) for s in self._status.values()]

    def _held_view(self, status: PeerStatus) -> PeerStatus:
        note = self.limits.hold_note(status.address)
        if note is None and not status.established:
            note = self.bfd.hold_note(status.address)
        if note is None:
            return status
        return replace(status, state="start", bgp_state="Idle", last_error=note)
