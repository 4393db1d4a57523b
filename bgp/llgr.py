"""Long-lived graceful restart (RFC 9494), receive side: its vocabulary and the stale time that applies.

Stage: shared by the receive side of the route distributor. ``bgp.graceful`` runs the long-lived phase of a
peer's restart, ``bgp.rib`` ranks LLGR-stale paths last, ``bgp.policy`` keeps them from other peers and
``bgp.routes_view`` shows them (docs/graceful-restart.md).

Owns: the two well-known communities, what makes a path LLGR-stale, and the choice of one session's
long-lived stale time from our setting and the peer's OPEN. Pure.

Complicating factors:
- ExaBGP 5.0.x cannot put the capability in our OPEN, so no peer negotiates LLGR with us as the RFC means
  it. The long-lived phase is our own decision (BGPPeer ``restartMode``); the peer's capability, when its
  OPEN carries one (ExaBGP passes it on as an unknown capability), can only shorten the time for the
  session's family, or turn the phase off by leaving that family out.
- A path is LLGR-stale by its LLGR_STALE community, wherever that came from: one a peer sent with it
  counts the same (RFC 9494 asks receivers to treat it so), ranks last and is passed on to nobody.
- The community is added to the stored attributes, so filters, ``calico-bgp routes`` and the kernel see
  one consistent path; the re-announced path replaces it whole, without the community.
"""

from __future__ import annotations

LLGR_STALE = (65535, 6)
NO_LLGR = (65535, 7)


def is_llgr_stale(communities: tuple[tuple[int, ...], ...]) -> bool:
    return LLGR_STALE in communities


def stamped(communities: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    """``communities`` with LLGR_STALE (once)."""
    return communities if LLGR_STALE in communities else (*communities, LLGR_STALE)


def stale_time(ours: int, family: str, offered: tuple[tuple[str, int], ...] | None) -> int:
    """The long-lived stale time for a session of ``family`` (``"ipv4"``/``"ipv6"``): ``ours`` (0: not in
    long-lived mode) unless the peer's OPEN offered the capability (``offered``: (family, time) pairs, as
    ``bgp.exabgp.events.Open.llgr``), which caps it for its families and leaves out the others.

    >>> stale_time(3600, "ipv4", None), stale_time(3600, "ipv4", (("ipv4 unicast", 60),))
    (3600, 60)
    >>> stale_time(3600, "ipv6", (("ipv4 unicast", 60),)), stale_time(0, "ipv4", (("ipv4 unicast", 60),))
    (0, 0)
    """
    if ours <= 0 or offered is None:
        return max(ours, 0)
    theirs = dict(offered).get(f"{family} unicast")
    return 0 if theirs is None else min(ours, theirs)
