"""RouteTable: reconciles the desired kernel routes with one routing table, touching only what it owns.

Stage: the kernel dataplane's reconciler. ``routes.resolve`` computes the desired routes, the daemon feeds
them in (``set_desired`` / ``update``) and calls ``apply()`` after a batch of changes and ``resync()``
periodically; ``routes.netlink`` does the I/O behind the ``routes.model.Netlink`` protocol.

Owns: the reconciliation (when to read back, what is dirty, holding deletes at start), retry back-off,
kernel events, and the calico_bgp_kernel_* metrics. Split along its two inputs: the desired routes,
admitted and in kernel form, live in ``routes.desired.DesiredRoutes``; the view of the kernel (ours by
(dst, metric), kernel truth after a read-back, and the foreign routes on destinations we might want) and
the per-destination write decisions live in ``routes.kernel_view``. What is left stays one module past
~400 lines, most of it this docstring (the ownership contract is stated where it is enforced): one
reconciler whose apply, retry, observe and read-back paths all change the same dirty set, delete hold and
retry map, so splitting it would only spread one state machine over two files.

Ownership rules (Calico's contract with Felix, docs/kernel-contract.md; predicates in ``routes.ownership``):
- Ours means: our protocol (12, like BIRD), our table, and no next hop on a Felix device (cali*,
  vxlan.calico, vxlan-v6.calico, *.cali, bpf*). Only such routes are ever replaced or deleted; deletes
  also carry the protocol, so the kernel itself refuses to remove anything else.
- Tables 1-250 are Felix's and 0/252/255 are reserved: a RouteTable refuses to manage them, and refuses
  (logs, skips) desired routes for another table or with a next hop on a Felix device.
- Destination exclusivity: the kernel keys a route by (table, dst, tos, metric), so a route of ours with a
  different metric could sit beside Felix's. We do not do that: a dst that holds ANY foreign route in our
  table (Felix's proto-boot workload /32, a proto-80 route, the connected subnet) is a conflict. The
  desired route is skipped and reported (``conflicts``, a gauge, one log line), and a route of ours on
  that dst is withdrawn. A metric-0 route of ours next to Felix's metric-1024 /32 would steal a local
  pod's traffic; a higher metric would be dead weight.
- Routes new to us are created with NLM_F_EXCL, so a foreign route that appeared since the last read-back
  (same key) makes the kernel answer EEXIST instead of being overwritten. Only routes we hold are written
  with NLM_F_REPLACE, which keeps next-hop changes hitless.

Complicating factors:
- Restart safety (BIRD's ``persist`` + graceful restart). The first read-back adopts existing proto-12
  routes as ours; deleting an *adopted* route stays held until the owner calls ``hold_deletes(False)``
  (e.g. after End-of-RIB from the peers), so a restart does not blackhole traffic while routes are
  re-learned. The hold covers only destinations this run has not wanted yet: once a destination was
  desired in this run, BGP has spoken about it, and a withdraw (a peer without graceful restart going
  down, a prefix withdrawn) is carried out at once, hold or not.
- Read-back is not write-back (see ``routes.rtnetlink``): gateway-only next hops come back with the
  device the kernel resolved; ``same_route`` treats an unset device as a wildcard.
- IPv4 drops a downed device's routes without notifications; ``observe`` forces a read-back on such link
  transitions. A deletion of one of our routes by someone else arrives as a notification (the monitor's
  kernel filter drops only our own additions and deletions) and is repaired at once; a change that keeps
  our protocol (``ip route replace ... proto bird``) sends no notification we receive, and waits for
  ``resync``.
- Errors are retried with exponential back-off per destination (``next_retry``, ``retry_due``). A retry
  writes only the destinations that failed: the desired routes are already held here, so nothing upstream
  is recomputed for a refusal, and a route the kernel keeps refusing costs one write per back-off. A
  destination whose desired route changes or goes away loses its back-off (the next write is a new
  attempt), and one that needs nothing any more loses its retry entry and its refusal: the retry map only
  ever holds destinations that are desired or still ours in the kernel (docs/bounds.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from calico_bgp.backoff import Backoff
from routes.desired import DesiredRoutes
from routes.kernel_view import KernelView, plan_writes
from routes.model import (
    ADD,
    DEL,
    LINK_DOWN,
    LINK_UP,
    RT_TABLE_MAIN,
    RTPROT_BIRD,
    LinkEvent,
    Netlink,
    Route,
    RouteEvent,
)
from routes.ownership import SharedDescriptions, is_felix_device, table_refusal

log = logging.getLogger(__name__)

RETRY_FIRST = 1.0  # seconds before the first retry of a failed route; doubles per failure
RETRY_MAX = 30.0
# No jitter: the retries reach only this node's kernel, and the routes that failed together are better
# retried together, in one write.
RETRY_BACKOFF = Backoff(first=RETRY_FIRST, cap=RETRY_MAX)


@dataclass(frozen=True)
class ApplyResult:
    replaced: int = 0  # routes written (created or replaced)
    deleted: int = 0
    held: int = 0  # deletes deferred by hold_deletes
    errors: tuple[tuple[Route, str], ...] = ()
    conflicts: tuple[str, ...] = ()  # desired dsts skipped this round: a foreign route holds them
    repaired: int = 0  # resync only: routes the read-back found different from what we had programmed
    # Routes written or deleted this round that the kernel acknowledged without error (propagation timing).
    acked: tuple[Route, ...] = ()


class RouteTable:
    def __init__(
        self,
        netlink: Netlink,
        *,
        proto: int = RTPROT_BIRD,
        table: int = RT_TABLE_MAIN,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        hold_deletes: bool = True,
    ) -> None:
        if reason := table_refusal(table):
            raise ValueError(reason)
        self._netlink = netlink
        self.proto = proto
        self.table = table
        self._clock = clock
        self._hold = hold_deletes
        self._wanted = DesiredRoutes(table, proto)
        self._view = KernelView()  # ours and foreign routes in the kernel table, as far as we know
        self._describe = SharedDescriptions()  # a foreign route's line in conflict reports
        self._dirty: set[str] = set()
        self._held: set[str] = set()
        self._adopted: set[str] = set()  # dsts found at the first read-back and not desired since
        self._retry: dict[str, tuple[float, int]] = {}  # dst -> (not before, failures in a row)
        self._failures: dict[str, str] = {}  # dst -> the kernel's last refusal, until it is programmed
        self._conflicts: dict[str, str] = {}
        self._links: dict[str, bool] = {}  # device -> admin up, from observed link events
        self._synced = False  # False: read the table back before the next decision
        self._adopting = True  # the first read-back adopts, later ones repair
        self._lock = asyncio.Lock()
        registry = registry if registry is not None else CollectorRegistry()
        self._m_installed = Gauge(
            "calico_bgp_kernel_routes_installed", "Routes of ours in the kernel table.", registry=registry
        )
        self._m_errors = Counter(
            "calico_bgp_kernel_route_errors", "Route writes the kernel rejected.", registry=registry
        )
        self._m_repairs = Counter(
            "calico_bgp_kernel_route_repairs",
            "Routes a read-back found changed, missing or stray behind our back.",
            registry=registry,
        )
        self._m_conflicts = Gauge(
            "calico_bgp_kernel_route_conflicts",
            "Desired routes skipped because a foreign route holds the destination.",
            registry=registry,
        )
        self._m_seconds = Histogram(
            "calico_bgp_kernel_route_apply_seconds", "Duration of apply() and resync().", registry=registry
        )

    # -- desired state -----------------------------------------------------------------------------

    def set_desired(self, routes: Iterable[Route]) -> None:
        """Replace the whole desired set."""
        changed = self._wanted.replace_all(routes)
        if self._retry or self._failures:
            for dst in changed:
                self._decided(dst, dst in self._wanted.routes)
        self._dirty |= changed

    def update(
        self, upserts: Mapping[str, Route] | Iterable[Route] = (), removes: Iterable[str] = ()
    ) -> None:
        """Incremental change: add or replace routes (a dst-keyed dict or plain routes), remove dsts."""
        changed, gone = self._wanted.update(upserts, removes)
        self._dirty.update(changed, gone)
        if self._retry or self._failures:
            for dst in gone:
                self._decided(dst, False)
            for dst in changed:
                self._decided(dst, True)

    def _decided(self, dst: str, desired: bool) -> None:
        """The desired route of ``dst`` changed (``desired``) or went away: its back-off is void, as the next
        write is a new attempt (a new next hop may well go in) or a deletion. A destination that leaves the
        desired set also forgets its refusal: the retry map never outlives the desire that filled it."""
        self._retry.pop(dst, None)
        if not desired:
            self._failures.pop(dst, None)

    @property
    def desired(self) -> Mapping[str, Route]:
        return self._wanted.routes

    @property
    def refused(self) -> Mapping[str, str]:
        return self._wanted.refused

    @property
    def conflicts(self) -> Mapping[str, str]:
        """Desired dsts held by a foreign route -> what holds them (as of the last apply)."""
        return self._conflicts

    @property
    def installed(self) -> int:
        return self._view.installed

    @property
    def failures(self) -> Mapping[str, str]:
        """Desired dsts the kernel refused at the last attempt -> its error (they are retried)."""
        return {dst: text for dst, text in self._failures.items() if dst in self._wanted.routes}

    @property
    def holding_deletes(self) -> bool:
        return self._hold

    def hold_deletes(self, hold: bool) -> None:
        """Defer (True) or allow (False) deleting routes that are no longer desired. Releasing queues the
        deferred deletes for the next apply()."""
        self._hold = hold
        if not hold:
            self._dirty |= self._held
            self._held.clear()
            self._adopted.clear()

    def invalidate(self) -> None:
        """Our view may be wrong (notifications were lost): read the table back before the next decision."""
        self._synced = False

    def next_retry(self) -> float | None:
        """Clock time at which apply() should run again to retry failed routes, None if nothing waits."""
        return min((at for at, _ in self._retry.values()), default=None)

    async def retry_due(self) -> ApplyResult | None:
        """Retry the destinations whose back-off has run out, None when none has. Only the failed
        destinations (and whatever else is pending) are written: the desired routes are already here, so a
        kernel refusal never costs the caller a recomputation of them."""
        at = self.next_retry()
        if at is None or at > self._clock():
            return None
        return await self.apply()

    # -- kernel events -----------------------------------------------------------------------------

    def observe(self, event: RouteEvent | LinkEvent) -> bool:
        """Fold a kernel notification into the view; True when an apply() is now needed."""
        if isinstance(event, LinkEvent):
            if is_felix_device(event.ifname):
                return False
            was_up = self._links.get(event.ifname)
            if event.action == LINK_UP:
                self._links[event.ifname] = True
                if was_up:
                    return False  # an attribute change of a link that was already up
                self._retry.clear()  # routes waiting for the device can go in now
                return bool(self._dirty)
            if event.action == LINK_DOWN:
                self._links[event.ifname] = False
                if was_up is False:
                    return False
            else:
                self._links.pop(event.ifname, None)
            # IPv4 flushes the routes of a downed or deleted device silently; read back before trusting
            # the programmed view again.
            self._synced = False
            return True
        route = event.route
        if route.table != self.table:
            return False
        dst, prio = route.dst, route.priority
        if self._ours(route):
            if event.action == DEL and prio in self._view.programmed.get(dst, {}):
                self._view.forget(route)
                self._dirty.add(dst)
                want = self._wanted.routes.get(dst)
                if want is None:
                    return False  # our own withdrawal, seen before its ack was processed
                if want.priority == prio:  # not the old metric of a route we just moved
                    log.warning("kernel route %s (ours) was deleted by someone else: reinstalling", dst)
                    self._m_repairs.inc()
                return True
            return False
        if event.action == ADD:
            self._view.add_foreign(dst, prio, self._describe(route))
            hit = dst in self._wanted.routes or dst in self._view.programmed
            self._view.forget(route)  # at the same kernel key, the kernel has overwritten ours
        else:
            self._view.remove_foreign(dst, prio)
            hit = dst in self._wanted.routes
        if hit:
            self._dirty.add(dst)
        return hit

    def _ours(self, route: Route) -> bool:
        return route.proto == self.proto and not any(is_felix_device(h.ifname) for h in route.nexthops)

    # -- reconciliation ----------------------------------------------------------------------------

    async def apply(self) -> ApplyResult:
        """Program the difference between desired and programmed; idempotent."""
        async with self._lock:
            start = self._clock()
            if not self._synced:
                await self._read_back()
            result = await self._apply_dirty()
            self._m_seconds.observe(max(0.0, self._clock() - start))
            return result

    async def resync(self) -> ApplyResult:
        """Full read-back of the table, then repair every difference."""
        async with self._lock:
            start = self._clock()
            repaired = await self._read_back()
            self._retry.clear()
            result = await self._apply_dirty()
            self._m_seconds.observe(max(0.0, self._clock() - start))
            return replace(result, repaired=repaired)

    async def _read_back(self) -> int:
        """Rebuild the programmed and foreign views from a dump of the table. The first read-back adopts
        what a previous run left; later ones count the routes that differ from our view as repairs."""
        dump = await self._netlink.dump_routes(None, self.table)
        repairs = self._view.load(dump, self.table, self._ours, compare=not self._adopting)
        programmed = self._view.programmed
        if self._adopting:
            if programmed:
                log.info("adopted %d existing proto-%d routes from table %d",
                         self._view.installed, self.proto, self.table)
            self._adopted = set(programmed) - self._wanted.routes.keys()
            self._adopting = False
        elif repairs:
            log.warning("kernel table %d drifted: %d routes differ from what we programmed",
                        self.table, repairs)
            self._m_repairs.inc(repairs)
        self._dirty |= self._wanted.routes.keys() | programmed.keys() | self._held
        self._held.clear()
        self._synced = True
        return repairs

    async def _apply_dirty(self) -> ApplyResult:
        now = self._clock()
        plan = plan_writes(self._dirty, now, self._wanted.routes, self._view, self._retry, self._failures,
                           self._hold, self._held, self._adopted)
        creates, replaces, deletes, settled = plan.creates, plan.replaces, plan.deletes, plan.settled
        retries, failures = self._retry, self._failures
        for dst in settled:
            retries.pop(dst, None)
            failures.pop(dst, None)
        self._dirty = plan.waiting
        failed: list[tuple[Route, str]] = []
        if creates or replaces or deletes:
            failed = await self._netlink.apply(replaces, deletes, creates)
        writes = replaces + creates
        written, deleted, errors = self._absorb(writes, deletes, failed)
        acked = (*writes, *deletes)
        if failed:
            refused = {id(route) for route, text in failed if not text.startswith("ESRCH")}  # ESRCH: gone
            acked = tuple(route for route in acked if id(route) not in refused)
        self._update_conflicts()
        self._m_installed.set(self.installed)
        return ApplyResult(
            replaced=written,
            deleted=deleted,
            held=sum(len(self._view.programmed.get(d, {})) for d in self._held),
            errors=tuple(errors),
            conflicts=tuple(sorted(self._conflicts)),
            acked=acked,
        )

    def _absorb(
        self, writes: list[Route], deletes: list[Route], failed: list[tuple[Route, str]]
    ) -> tuple[int, int, list[tuple[Route, str]]]:
        now = self._clock()
        errors: list[tuple[Route, str]] = []
        view, retries, failures = self._view, self._retry, self._failures
        if not failed:  # the common case, and the hot one: every write and delete went through
            for route in deletes:
                view.forget(route)
                if (retries or failures) and route.dst not in self._wanted.routes:
                    retries.pop(route.dst, None)  # a deletion that failed before went through
                    failures.pop(route.dst, None)
            for route in writes:
                view.record(route)
                if retries or failures:
                    retries.pop(route.dst, None)
                    failures.pop(route.dst, None)
            return len(writes), len(deletes), errors
        why = {id(route): text for route, text in failed}
        deleted = written = 0
        for route in deletes:
            text = why.get(id(route))
            if text is None or text.startswith("ESRCH"):  # ESRCH: already gone, which is what we wanted
                view.forget(route)
                deleted += 1
                if route.dst not in self._wanted.routes:
                    retries.pop(route.dst, None)
                    failures.pop(route.dst, None)
            else:
                errors.append((route, text))
        for route in writes:
            text = why.get(id(route))
            if text is None:
                view.record(route)
                self._retry.pop(route.dst, None)
                self._failures.pop(route.dst, None)
                written += 1
            elif text.startswith("EEXIST"):
                # The exact kernel key appeared since our read-back and is not known to be ours.
                view.add_foreign(route.dst, route.priority, "unknown route (EEXIST)")
            else:
                errors.append((route, text))
        for route, text in errors:
            log.warning("kernel route %s: %s", route.dst, text)
            if text.startswith(("ENOBUFS", "ETIMEDOUT")):
                self._synced = False  # outcome unknown: read the table back before the next decision
            streak = self._retry.get(route.dst, (0.0, 0))[1] + 1
            self._retry[route.dst] = (now + RETRY_BACKOFF.base(streak), streak)
            self._failures[route.dst] = text
            self._dirty.add(route.dst)
        self._m_errors.inc(len(errors))
        return written, deleted, errors

    def _update_conflicts(self) -> None:
        conflicts = self._view.conflicts(self._wanted.routes)
        for dst in conflicts.keys() - self._conflicts.keys():
            log.warning("not programming %s: the destination is held by a foreign route (%s)",
                        dst, conflicts[dst])
        self._conflicts = conflicts
        self._m_conflicts.set(len(conflicts))
