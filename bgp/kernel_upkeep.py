"""Kernel upkeep: the once-a-second pass that keeps the route table honest after it was written.

Stage: the kernel dataplane, beside the speaker's flushes. The speaker writes what changed when it changes;
this pass covers what no event announces: routes adopted at start whose deletion was held, destinations the
kernel refused and whose back-off ran out, and the periodic read-back that finds what someone changed
behind a lost notification.

Owns: the time of the last read-back. The route table (``routes.table``) owns the routes, the holds and the
back-offs; the sweep gate (``bgp.sweep_gate``) owns the evidence that adopted routes may go.

Complicating factors:
- Releasing the start-up hold needs the speaker only to apply the table again (``kernel_changed``): the
  desired routes are already there, and nothing is selected or announced again.
- A read-back of 100k routes takes a few hundred ms; it runs at ``interval`` (90 s by default), counted from
  the start of this pass's task, not from the last change.
- A kernel error (an ``OSError`` from netlink) costs only this pass: it is logged and the next second tries
  again. Anything else is a bug and ends the task, which ends the daemon (its supervision contract).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class KernelUpkeep:
    def __init__(
        self,
        table,  # routes.table.RouteTable
        *,
        ready_to_sweep: Callable[[], bool],
        opened_by: Callable[[], str],  # why the sweep gate opened, for the log
        reapply: Callable[[], None],  # the speaker's kernel-only path
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._table = table
        self._ready_to_sweep = ready_to_sweep
        self._opened_by = opened_by
        self._reapply = reapply
        self._interval = interval
        self._clock = clock
        self._sleep = sleep
        self._last_resync: float | None = None

    async def once(self) -> None:
        """One pass: release the start-up hold when the gate opens, retry what is due, read back when due."""
        table = self._table
        now = self._clock()
        if self._last_resync is None:
            self._last_resync = now
        try:
            if table.holding_deletes and self._ready_to_sweep():
                log.info("sweeping adopted routes nobody re-announced: %s", self._opened_by())
                table.hold_deletes(False)
                self._reapply()
            # Only the refused destinations are written again; the speaker recomputes nothing.
            await table.retry_due()
            if now - self._last_resync >= self._interval:
                self._last_resync = now
                result = await table.resync()
                if result.repaired:
                    log.warning("route resync repaired %d routes", result.repaired)
        except OSError as exc:
            log.warning("kernel route resync failed: %s", exc)

    async def run(self) -> None:
        self._last_resync = self._clock()
        while True:
            await self._sleep(1.0)
            await self.once()
