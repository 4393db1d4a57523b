"""When the kernel routes adopted from a previous run may be swept.

Stage: start-up of the kernel dataplane. At start the route table adopts the proto-bird routes it finds and
holds their deletion (``RouteTable.hold_deletes``); the daemon asks this gate, once a second, whether the
hold may end. Deciding too early deletes routes that the peers are about to re-announce, so pods on other
nodes lose their paths; deciding too late only keeps a route that nobody announces a little longer.

Owns: the evidence that ends the hold. Pure and clock-injected.

Complicating factors:
- The evidence comes from BGP, so nothing counts before ExaBGP runs, and ExaBGP starts only once the first
  datastore snapshot is rendered into a full config. A daemon restarted during an etcd outage may wait for
  that far longer than any hold time; a wall clock from process start would sweep every adopted route
  before a single session could come up.
- Two kinds of evidence, whichever comes first: every configured session came up and sent End-of-RIB, or
  ExaBGP has been running with a full config for the hold time (a peer that never comes back must not pin
  its routes for ever). The hold time counts from ExaBGP's latest start: a restarted ExaBGP starts every
  session over, so its peers get the whole hold time again.
- Once open the gate stays open: the routes adopted at start are gone, and later deletions are ordinary.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SweepGate:
    def __init__(self, hold: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._hold = hold
        self._clock = clock
        self._exabgp_since: float | None = None
        self.opened_by: str = ""  # why the gate opened; "" while closed

    def exabgp_started(self) -> None:
        """ExaBGP (re)started with a rendered config: the hold time counts from now."""
        if not self.opened_by:
            self._exabgp_since = self._clock()

    def ready(self, all_synced: bool) -> bool:
        """``all_synced``: every configured session came up and sent End-of-RIB since we started."""
        if self.opened_by:
            return True
        if self._exabgp_since is None:
            return False
        if all_synced:
            self.opened_by = "every session sent End-of-RIB"
        elif self._clock() - self._exabgp_since >= self._hold:
            self.opened_by = f"ExaBGP has run {self._hold:g}s without every session synchronised"
        return bool(self.opened_by)
