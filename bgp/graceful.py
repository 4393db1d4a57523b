"""Graceful restart, receive side (RFC 4724 §4.2, RFC 9494): which peers are restarting, when their stale
paths become long-lived stale and when they go.

Stage: the receive side of the route distributor. ``bgp.speaker`` reports each peer's sessions going down
and coming up, its End-of-RIB markers and the clock; this module marks and sweeps stale paths in the
Adj-RIB-In (``bgp.rib``) and returns the prefixes whose paths it removed, for the speaker to re-select.

Owns: one record per restarting peer (its deadline, its phase, and whether its session is back). The paths
and their stale marks live in the Adj-RIB-In. Pure: the caller passes the times.

Complicating factors:
- The stale set is always what the peer has not re-announced since its latest session came up. So every
  established session that ends with graceful restart negotiated marks all the peer's paths stale again,
  including paths it re-announced in a session that dropped before its End-of-RIB; otherwise a path the
  peer stopped announcing during such a short session would never be swept.
- A session that drops before it was established (a failed reconnect) is no new restart: the running
  timer is kept, so reconnect attempts cannot stretch the restart time.
- Two deadlines, both the restart time the peer advertised: from the session's end until it is back, and
  from its return until End-of-RIB. A peer that never sends End-of-RIB thus loses what it did not
  re-announce, and a peer that reconnects late still gets its full time to resend a large table.
- A new session whose OPEN does not offer graceful restart (or offers a restart time of 0) ends the restart
  at once: the peer kept no forwarding state for us to wait for.
- End-of-RIB is per address family and sweeps only that family's stale paths.
- Long-lived graceful restart (RFC 9494; ``bgp.llgr`` says why it is our decision alone): a peer with a
  long-lived stale time whose restart time runs out before it is back, or that had no graceful restart to
  begin with, keeps its stale paths for that time as LLGR-stale (least preferred, passed on to nobody, still
  in the kernel when alone); those marked NO_LLGR go at that moment. A returning peer is then handled as in
  any restart: its End-of-RIB, within its new restart time, sweeps what it did not re-announce.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bgp.rib import AdjRibIn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Restart:
    deadline: float  # when the peer's stale paths go, or become long-lived stale
    back: bool = False  # its session is established again; End-of-RIB is awaited
    llgr_time: int = 0  # long-lived stale time after the restart time (s); 0: none
    long_lived: bool = False  # the paths are LLGR-stale: the deadline ends the long-lived stale time


class GracefulRestarts:
    """Per-peer restart state over one Adj-RIB-In; every method returns the prefixes it removed."""

    def __init__(self, rib: AdjRibIn) -> None:
        self._rib = rib
        self._restarts: dict[str, Restart] = {}

    def session_down(self, peer: str, restart_time: int, now: float, llgr_time: int = 0) -> set[str]:
        """``peer``'s session ended; ``restart_time`` is the one negotiated for it (0: none), ``llgr_time``
        the long-lived stale time that follows it (0: none)."""
        current = self._restarts.get(peer)
        if current is not None and not current.back:
            return set()  # a failed reconnect during the restart: the restart timer keeps running
        if not self._rib.count(peer) or (restart_time <= 0 and llgr_time <= 0):
            self._restarts.pop(peer, None)
            return self._rib.drop_peer(peer)
        stale = self._rib.mark_stale(peer)
        if restart_time <= 0:
            return self._long_lived(peer, llgr_time, now)
        self._restarts[peer] = Restart(now + restart_time, llgr_time=max(llgr_time, 0))
        log.info("%s went down with graceful restart: keeping %d paths for %ds", peer, stale, restart_time)
        return set()

    def _long_lived(self, peer: str, llgr_time: int, start: float) -> set[str]:
        """The peer's stale paths become LLGR-stale until ``start + llgr_time``; returns the prefixes whose
        paths changed."""
        changed, dropped = self._rib.make_llgr_stale(peer)
        kept = self._rib.stale_count(peer)
        if kept:
            self._restarts[peer] = Restart(start + llgr_time, llgr_time=llgr_time, long_lived=True)
        else:
            self._restarts.pop(peer, None)
        log.info(
            "%s: %d paths long-lived stale for %ds, %d marked NO_LLGR removed", peer, kept, llgr_time, dropped
        )
        return changed

    def session_up(self, peer: str, restart_time: int, now: float) -> set[str]:
        """``peer``'s session is established again; ``restart_time`` is what its new OPEN negotiated."""
        if peer not in self._restarts:
            return set()
        if restart_time <= 0:
            del self._restarts[peer]
            swept = self._rib.sweep_stale(peer)
            log.info("%s came back without graceful restart: %d stale paths removed", peer, len(swept))
            return swept
        self._restarts[peer] = Restart(now + restart_time, back=True)
        return set()

    def end_of_rib(self, peer: str, ipv6: bool) -> set[str]:
        swept = self._rib.sweep_stale(peer, ipv6=ipv6)
        if not self._rib.stale_count(peer):
            self._restarts.pop(peer, None)
        return swept

    def expire(self, now: float) -> set[str]:
        """Every peer whose deadline has come: its stale paths become long-lived stale if it has a long-lived
        stale time and is not back yet, else they are swept. Returns the prefixes whose paths changed."""
        swept: set[str] = set()
        for peer, restart in list(self._restarts.items()):
            if now < restart.deadline:
                continue
            if restart.llgr_time > 0 and not restart.back and not restart.long_lived:
                # From the restart time's end, not this tick's: a late tick must not lengthen the phase.
                swept |= self._long_lived(peer, restart.llgr_time, restart.deadline)
            else:
                del self._restarts[peer]
                gone = self._rib.sweep_stale(peer)
                why = "sent no End-of-RIB" if restart.back else "did not come back"
                within = "restart time" if restart.back or not restart.long_lived else "long-lived stale time"
                log.info("%s %s within its %s: %d stale paths removed", peer, why, within, len(gone))
                swept |= gone
        return swept

    def forget(self, peer: str) -> None:
        """The peer's paths were dropped by other means (removed from the config, prefix limit)."""
        self._restarts.pop(peer, None)

    def restart(self, peer: str) -> Restart | None:
        return self._restarts.get(peer)

    def __len__(self) -> int:
        return len(self._restarts)
