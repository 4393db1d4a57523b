"""RouteTable: reconciles the desired kernel routes with one routing table, touching only what it owns.

Stage: the kernel dataplane's reconciler. ``routes.resolve`` computes the desired routes, the daemon feeds
them in (``set_desired`` / ``update``) and calls ``apply()`` after a batch of changes and ``resync()``
periodically; ``routes.netlink`` does the I/O.

Owns: the desired map (dst -> Route), the view of what we have programmed ((dst, metric) -> Route, kernel
truth after a read-back), the foreign routes that sit on destinations we might want, retry back-off,
and the calico_bgp_kernel_* metrics.

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
  kernel filter only drops our own additions) and is repaired at once; a change that keeps our protocol
  (``ip route replace ... proto bird``) sends no notification we receive, and waits for ``resync``.
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

from routes.model import RT_TABLE_MAIN, RTPROT_BIRD, Route
from routes.netlink import ADD, DEL, LINK_DOWN, LINK_UP, LinkEvent, Netlink, RouteEvent
from routes.ownership import describe, is_felix_device, same_route, table_refusal
from routes.rtnetlink import kernel_form

log = logging.getLogger(__name__)

RETRY_FIRST = 1.0  # seconds before the first retry of a failed route; doubles per failure
RETRY_MAX = 30.0


@dataclass(frozen=True)
class ApplyResult:
    replaced: int = 0  # routes written (created or replaced)
    deleted: int = 0
    held: int = 0  # deletes deferred by hold_deletes
    errors: tuple[tuple[Route, str], ...] = ()
    conflicts: tuple[str, ...] = ()  # desired dsts skipped this round: a foreign route holds them
    repaired: int = 0  # resync only: routes the read-back found different from what we had programmed


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
        self._desired: dict[str, Route] = {}
        self._refused: dict[str, str] = {}
        self._programmed: dict[str, dict[int, Route]] = {}
        self._installed = 0  # routes in _programmed, kept as it changes: the gauge is set on every apply
        self._foreign: dict[str, dict[int, str]] = {}
        self._dirty: set[str] = set()
        self._held: set[str] = set()
        self._adopted: set[str] = set()  # dsts found at the first read-back and not desired since
        self._retry: dict[str, tuple[float, float]] = {}  # dst -> (not before, current back-off)
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
        new: dict[str, Route] = {}
        refused: dict[str, str] = {}
        for route in routes:
            admitted, reason = self._admit(route)
            if admitted is not None:
                new[admitted.dst] = admitted
            else:
                refused[route.dst] = reason
        self._log_refusals(refused)
        changed = {d for d in new.keys() | self._desired.keys() if new.get(d) != self._desired.get(d)}
        if self._retry or self._failures:
            for dst in changed:
                self._decided(dst, dst in new)
        self._desired, self._refused = new, refused
        self._dirty |= changed

    def update(
        self, upserts: Mapping[str, Route] | Iterable[Route] = (), removes: Iterable[str] = ()
    ) -> None:
        """Incremental change: add or replace routes (a dst-keyed dict or plain routes), remove dsts."""
        refused: dict[str, str] = {}
        for dst in removes:
            if self._desired.pop(dst, None) is not None:
                self._dirty.add(dst)
                if self._retry or self._failures:
                    self._decided(dst, False)
            self._refused.pop(dst, None)
        for route in upserts.values() if isinstance(upserts, Mapping) else upserts:
            admitted, reason = self._admit(route)
            if admitted is None:
                refused[route.dst] = reason
                if self._desired.pop(route.dst, None) is not None:
                    self._dirty.add(route.dst)
                    if self._retry or self._failures:
                        self._decided(route.dst, False)
            else:
                self._refused.pop(route.dst, None)
                if self._desired.get(route.dst) != admitted:
                    self._desired[route.dst] = admitted
                    self._dirty.add(route.dst)
                    if self._retry:
                        self._decided(route.dst, True)
        self._log_refusals(refused)
        self._refused.update(refused)

    def _decided(self, dst: str, desired: bool) -> None:
        """The desired route of ``dst`` changed (``desired``) or went away: its back-off is void, as the next
        write is a new attempt (a new next hop may well go in) or a deletion. A destination that leaves the
        desired set also forgets its refusal: the retry map never outlives the desire that filled it."""
        self._retry.pop(dst, None)
        if not desired:
            self._failures.pop(dst, None)

    def _admit(self, route: Route) -> tuple[Route | None, str]:
        reason = table_refusal(route.table) or (
            f"belongs to table {route.table}, not {self.table}" if route.table != self.table else ""
        )
        felix = sorted(h.ifname for h in route.nexthops if is_felix_device(h.ifname))
        if not reason and felix:
            reason = f"next hop on Felix's device {felix[0]}"
        if reason:
            return None, reason
        return kernel_form(route if route.proto == self.proto else replace(route, proto=self.proto)), ""

    def _log_refusals(self, refused: Mapping[str, str]) -> None:
        for dst, reason in refused.items():
            if self._refused.get(dst) != reason:
                log.error("refusing kernel route %s: %s", dst, reason)

    @property
    def desired(self) -> Mapping[str, Route]:
        return self._desired

    @property
    def refused(self) -> Mapping[str, str]:
        return self._refused

    @property
    def conflicts(self) -> Mapping[str, str]:
        """Desired dsts held by a foreign route -> what holds them (as of the last apply)."""
        return self._conflicts

    @property
    def installed(self) -> int:
        return self._installed

    @property
    def failures(self) -> Mapping[str, str]:
        """Desired dsts the kernel refused at the last attempt -> its error (they are retried)."""
        return {dst: text for dst, text in self._failures.items() if dst in self._desired}

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
            if event.action == DEL and prio in self._programmed.get(dst, {}):
                self._forget(route)
                self._dirty.add(dst)
                want = self._desired.get(dst)
                if want is None:
                    return False  # our own withdrawal, seen before its ack was processed
                if want.priority == prio:  # not the old metric of a route we just moved
                    log.warning("kernel route %s (ours) was deleted by someone else: reinstalling", dst)
                    self._m_repairs.inc()
                return True
            return False
        if event.action == ADD:
            self._foreign.setdefault(dst, {})[prio] = describe(route)
            hit = dst in self._desired or dst in self._programmed
            self._forget(route)  # at the same kernel key, the kernel has overwritten ours
        else:
            held = self._foreign.get(dst, {})
            held.pop(prio, None)
            if not held:
                self._foreign.pop(dst, None)
            hit = dst in self._desired
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
        programmed: dict[str, dict[int, Route]] = {}
        foreign: dict[str, dict[int, str]] = {}
        for route in await self._netlink.dump_routes(None, self.table):
            if route.table != self.table:
                continue
            if self._ours(route):
                programmed.setdefault(route.dst, {})[route.priority] = route
            else:
                foreign.setdefault(route.dst, {})[route.priority] = describe(route)
        repairs = 0
        if self._adopting:
            if programmed:
                log.info("adopted %d existing proto-%d routes from table %d",
                         sum(len(v) for v in programmed.values()), self.proto, self.table)
            self._adopted = set(programmed) - self._desired.keys()
            self._adopting = False
        else:
            for dst in programmed.keys() | self._programmed.keys():
                mine, kernel = self._programmed.get(dst, {}), programmed.get(dst, {})
                for prio in mine.keys() | kernel.keys():
                    a, b = mine.get(prio), kernel.get(prio)
                    if a is None or b is None or not same_route(a, b):
                        repairs += 1
            if repairs:
                log.warning("kernel table %d drifted: %d routes differ from what we programmed",
                            self.table, repairs)
                self._m_repairs.inc(repairs)
        self._programmed, self._foreign = programmed, foreign
        self._installed = sum(len(v) for v in programmed.values())
        self._dirty |= self._desired.keys() | programmed.keys() | self._held
        self._held.clear()
        self._synced = True
        return repairs

    async def _apply_dirty(self) -> ApplyResult:
        now = self._clock()
        creates: list[Route] = []  # new to us: created exclusively (EEXIST if the key was taken)
        replaces: list[Route] = []  # held by us: replaced in place
        deletes: list[Route] = []
        waiting: set[str] = set()
        settled: list[str] = []  # failed before, and nothing is left to write or delete for them
        # The hot path of a 100k-route apply: plain local lookups, no per-route allocations.
        desired, programmed, foreign, retries = self._desired, self._programmed, self._foreign, self._retry
        failures = self._failures
        for dst in self._dirty:
            retry = retries.get(dst)
            if retry is not None and retry[0] > now:
                waiting.add(dst)
                continue
            want = desired.get(dst)
            ours = programmed.get(dst)
            if want is None or dst in foreign:  # undesired, or yielded to the foreign owner
                if ours and not (self._hold and dst in self._adopted):
                    deletes.extend(ours.values())
                    continue
                if ours:
                    self._held.add(dst)
                if dst in failures or retry is not None:
                    settled.append(dst)
                continue
            if self._held:
                self._held.discard(dst)
            if self._adopted:
                self._adopted.discard(dst)
            if not ours:
                creates.append(want)
                continue
            have = ours.get(want.priority)
            if have is None:
                creates.append(want)
            elif not same_route(want, have):
                replaces.append(want)
            elif len(ours) == 1 and (dst in failures or retry is not None):
                settled.append(dst)  # the kernel holds what we want after all (a change reverted)
            if len(ours) > 1 or have is None:
                deletes.extend(r for p, r in ours.items() if p != want.priority)  # the metric moved
        for dst in settled:
            retries.pop(dst, None)
            failures.pop(dst, None)
        self._dirty = waiting
        failed: list[tuple[Route, str]] = []
        if creates or replaces or deletes:
            failed = await self._netlink.apply(replaces, deletes, creates)
        writes = replaces + creates
        written, deleted, errors = self._absorb(writes, deletes, failed)
        self._update_conflicts()
        self._m_installed.set(self.installed)
        return ApplyResult(
            replaced=written,
            deleted=deleted,
            held=sum(len(self._programmed.get(d, {})) for d in self._held),
            errors=tuple(errors),
            conflicts=tuple(sorted(self._conflicts)),
        )

    def _absorb(
        self, writes: list[Route], deletes: list[Route], failed: list[tuple[Route, str]]
    ) -> tuple[int, int, list[tuple[Route, str]]]:
        now = self._clock()
        errors: list[tuple[Route, str]] = []
        programmed, retries, failures = self._programmed, self._retry, self._failures
        if not failed:  # the common case, and the hot one: every write and delete went through
            for route in deletes:
                self._forget(route)
                if (retries or failures) and route.dst not in self._desired:
                    retries.pop(route.dst, None)  # a deletion that failed before went through
                    failures.pop(route.dst, None)
            for route in writes:
                held = programmed.get(route.dst)
                if held is None:
                    programmed[route.dst] = {route.priority: route}
                    self._installed += 1
                else:
                    self._installed += route.priority not in held
                    held[route.priority] = route
                if retries or failures:
                    retries.pop(route.dst, None)
                    failures.pop(route.dst, None)
            return len(writes), len(deletes), errors
        why = {id(route): text for route, text in failed}
        deleted = written = 0
        for route in deletes:
            text = why.get(id(route))
            if text is None or text.startswith("ESRCH"):  # ESRCH: already gone, which is what we wanted
                self._forget(route)
                deleted += 1
                if route.dst not in self._desired:
                    retries.pop(route.dst, None)
                    failures.pop(route.dst, None)
            else:
                errors.append((route, text))
        for route in writes:
            text = why.get(id(route))
            if text is None:
                held = self._programmed.setdefault(route.dst, {})
                self._installed += route.priority not in held
                held[route.priority] = route
                self._retry.pop(route.dst, None)
                self._failures.pop(route.dst, None)
                written += 1
            elif text.startswith("EEXIST"):
                # The exact kernel key appeared since our read-back and is not known to be ours.
                self._foreign.setdefault(route.dst, {})[route.priority] = "unknown route (EEXIST)"
            else:
                errors.append((route, text))
        for route, text in errors:
            log.warning("kernel route %s: %s", route.dst, text)
            if text.startswith(("ENOBUFS", "ETIMEDOUT")):
                self._synced = False  # outcome unknown: read the table back before the next decision
            backoff = min(RETRY_MAX, self._retry.get(route.dst, (0.0, RETRY_FIRST / 2))[1] * 2)
            self._retry[route.dst] = (now + backoff, backoff)
            self._failures[route.dst] = text
            self._dirty.add(route.dst)
        self._m_errors.inc(len(errors))
        return written, deleted, errors

    def _forget(self, route: Route) -> None:
        ours = self._programmed.get(route.dst)
        if ours is not None:
            if ours.pop(route.priority, None) is not None:
                self._installed -= 1
            if not ours:
                del self._programmed[route.dst]

    def _update_conflicts(self) -> None:
        # Iterate the foreign side: a few hundred workload and connected routes, against up to 100k ours.
        conflicts = {
            dst: "; ".join(held[p] for p in sorted(held))
            for dst, held in self._foreign.items()
            if dst in self._desired
        }
        for dst in conflicts.keys() - self._conflicts.keys():
            log.warning("not programming %s: the destination is held by a foreign route (%s)",
                        dst, conflicts[dst])
        self._conflicts = conflicts
        self._m_conflicts.set(len(conflicts))
