"""WorkloadRouteWatcher: follows the host routes Felix writes for local workloads, event-driven.

Stage: the kernel-to-BGP direction. Felix writes ``<podIP>/32 dev caliXXXX scope link proto boot`` (/128
for IPv6) in the main table for every local workload; BIRD learns them with ``protocol kernel { learn; }``.
This watcher keeps the map of such prefixes and hands what changed to the speaker (which applies
``bgp.export.ExportRules`` to each) via the daemon's ``on_change`` callback. It also fans every event
out to ``observers`` (the daemon passes ``RouteTable.observe`` and ``NexthopResolver.observe``) and every
full dump of the table to ``dump_observers`` (``NexthopResolver.load``; a re-dump after lost notifications
also tells the daemon to read its own routes back), so one monitor socket serves the whole package.

Owns: the map prefix -> metric -> device of workload routes (with an index device -> routes), the set of
prefixes touched since the last report, the coalescing of bursts, recovery from lost notifications, the
watch's liveness check and ``calico_bgp_kernel_watch_restarts_total{reason}``.

Design and complicating factors:
- Memory: a node may hold 100k workload routes, so each is a prefix, a metric and a device name shared
  with its neighbours (``routes.compact.One`` per prefix, the device index a set of prefixes), no dict or
  tuple of its own.
- No polling. The watch is subscribed BEFORE the initial dump, so a route added in between is seen as an
  event; replaying such an event over the dump is harmless (last event per key wins).
- Work per event and per report is proportional to what changed, not to the table: a node may hold 100k
  workload routes, and one pod starting must not cost a pass over all of them (here or in the speaker).
- IPv4 removes the routes of a deleted or downed device without RTM_DELROUTE (the pod's veth is deleted
  by the CNI before Felix cleans up), so link events drop every prefix on that device.
- A route replaced at the same kernel key by a non-workload route is an ``add`` of something else: the
  key is dropped. Any protocol on a cali* device counts (Felix's default is proto boot, 3).
- The same prefix may sit on two devices at different metrics (a pod recreated with the same IP before
  Felix removed the old route): the lowest metric is the one the kernel uses, so its device is reported.
- Lost notifications (ENOBUFS -> ``WatchOverflow``) trigger a fresh dump; the socket stays subscribed.
  Every prefix held before or found by a dump counts as touched, so one that vanished while notifications
  were lost is reported gone. The kernel-side filter drops additions of our own protocol
  (``exclude_proto``), and our own deletions of them, so programming or withdrawing 100k BGP routes does
  not flood this socket; someone else's deletions of our routes pass, so ``RouteTable`` hears of them.
- A dead or stalled watch must not leave a stale view. A socket error or an ended watch re-subscribes
  (after ``retry`` seconds) and re-reads everything. A watch that silently stops delivering is caught by
  ``verify_interval``: the workload routes of a dump are compared with ours; a prefix that differs in two
  dumps ``recheck`` seconds apart while the kernel held the same route both times is a missed
  notification (one merely in flight would have arrived), and the watch is replaced the same way. Routes
  of ``exclude_proto`` are left out of the comparison: the kernel filter hides their additions on
  purpose. Each dump that agrees (or replaces our view) calls ``heartbeat``. Detection bound for a silent
  stall: ``verify_interval + recheck`` after the first change it missed; a quiet kernel with a dead watch
  has nothing to miss.
- ``on_change`` is a plain synchronous callable receiving a delta: a mapping prefix -> device for each
  prefix touched in the burst that is now present, prefix -> None for each that is gone. It is called once
  per burst (first change + ``debounce`` seconds) and only when some prefix's device differs from what
  was last reported (added and removed within one burst says nothing). Reporting an entry the consumer
  already holds is possible (after a failed call) and must be a no-op for it. A call that raises is not
  lost: its entries are reported again with the next burst. It must not block: hand the delta to a queue
  or an event. The first call comes after the initial dump (every prefix present), even when empty, so
  the consumer knows the kernel has been read. During the call, ``burst_read_at`` is when the watch read
  the notification that started the burst (its ``read_at``; the clock is the watch's), None for a burst
  started by a dump: the export side of propagation timing (``bgp.latency``) starts there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter

from routes.compact import One, pop, put
from routes.model import (
    ADD,
    LINK_UP,
    RT_TABLE_MAIN,
    RTPROT_BIRD,
    UNICAST,
    LinkEvent,
    Netlink,
    Route,
    RouteEvent,
    WatchOverflow,
)

log = logging.getLogger(__name__)

WORKLOAD_DEVICE_PREFIX = "cali"
RETRY_SECONDS = 1.0  # before subscribing again after the socket failed or the watch ended
RECHECK_SECONDS = 1.0  # between the two dumps that must agree before a watch is declared stalled

# What on_change receives: prefix -> device now (the lowest metric's), or None once the prefix is gone.
WorkloadChanges = Mapping[str, str | None]


class WorkloadRouteWatcher:
    def __init__(
        self,
        netlink: Netlink,
        on_change: Callable[[WorkloadChanges], None],
        *,
        debounce: float = 0.05,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        device_prefix: str = WORKLOAD_DEVICE_PREFIX,
        table: int = RT_TABLE_MAIN,
        exclude_proto: int | None = RTPROT_BIRD,
        observers: Sequence[Callable[[RouteEvent | LinkEvent], object]] = (),
        dump_observers: Sequence[Callable[[list[Route]], object]] = (),
        verify_interval: float | None = None,
        verify_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry: float = RETRY_SECONDS,
        recheck: float = RECHECK_SECONDS,
        heartbeat: Callable[[], object] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._netlink = netlink
        self._on_change = on_change
        self._debounce = debounce
        self._sleep = sleep
        self._prefix = device_prefix
        self._table = table
        self._exclude = exclude_proto
        self._observers = tuple(observers)
        self._dump_observers = tuple(dump_observers)
        # prefix -> metric -> device, a ``routes.compact.One`` per prefix with one metric (nearly all).
        self._routes: dict[str, Mapping[int, str]] = {}
        self._on_device: dict[str, set[str]] = {}  # device -> prefixes with a route on it: link events
        # Prefixes touched since the last successful report -> their device as reported then (None: absent).
        # Comparing with it at report time drops flaps within a burst without a second map of everything.
        self._touched: dict[str, str | None] = {}
        self._reported = False
        self._flush: asyncio.Task[None] | None = None
        self._soon: asyncio.Handle | None = None  # a burst's report without debounce: the next loop turn
        self._watch: object = None  # the current subscription, whose read_at stamps a burst
        self._loading = False
        self.burst_read_at: float | None = None
        self.ready = asyncio.Event()  # set after the first on_change call
        # Liveness: None = never compared with a dump (a socket error or end is still recovered).
        self._verify_interval = verify_interval
        self._verify_sleep = verify_sleep  # apart from ``sleep``, which times the debounce
        self._retry = retry
        self._recheck = recheck
        self._heartbeat = heartbeat  # called after every dump that agreed with (or replaced) our view
        self.restarts = 0
        self._m_restarts = Counter(
            "calico_bgp_kernel_watch_restarts",
            "Times the kernel route watch was subscribed again: error (socket failure), ended, or stalled "
            "(a dump showed workload routes the notifications never reported).",
            ["reason"],
            registry=registry if registry is not None else CollectorRegistry(),
        )

    @property
    def prefixes(self) -> frozenset[str]:
        return frozenset(self._routes)

    @property
    def devices(self) -> dict[str, str]:
        """prefix -> workload device (lowest metric wins when a prefix sits on two devices)."""
        return {dst: metrics[min(metrics)] for dst, metrics in self._routes.items()}

    def device(self, prefix: str) -> str | None:
        """The device of ``prefix``'s lowest-metric workload route, None when there is none."""
        metrics = self._routes.get(prefix)
        if type(metrics) is One:  # nearly every prefix: without the Mapping protocol's method calls
            return metrics.value
        return metrics[min(metrics)] if metrics else None

    async def run(self) -> None:
        """Watch until cancelled. A failed, ended or stalled watch is replaced by a fresh subscription
        and a full re-read; the task itself only ends by cancellation."""
        try:
            while True:
                try:
                    reason = await self._follow()
                except OSError as exc:
                    reason = "error"
                    log.warning("kernel route watch failed: %s", exc)
                self.restarts += 1
                self._m_restarts.labels(reason).inc()
                if reason != "stalled":  # a socket that keeps failing is retried at a bounded rate
                    log.warning("subscribing to route notifications again in %.1fs", self._retry)
                    await self._verify_sleep(self._retry)
        finally:
            if self._flush is not None:
                self._flush.cancel()
            if self._soon is not None:
                self._soon.cancel()

    async def _follow(self) -> str:
        """One subscription: dump, then follow notifications (and verify them) until it goes wrong.
        Returns why it ended: "ended" or "stalled"; a socket failure raises ``OSError``."""
        watch = self._watch = self._netlink.watch(exclude_proto=self._exclude)
        tasks: list[asyncio.Future[str]] = []
        try:
            await self._load()
            tasks.append(asyncio.ensure_future(self._consume(watch)))
            if self._verify_interval is not None:
                tasks.append(asyncio.ensure_future(self._verify_loop(self._verify_interval)))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            return done.pop().result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            watch.close()

    async def _consume(self, watch) -> str:
        while True:
            try:
                async for event in watch:
                    self.feed(event)
                    for observer in self._observers:
                        observer(event)
            except WatchOverflow:
                log.warning("route notifications were lost; re-reading the workload routes")
                await self._load()
            else:
                log.warning("the kernel route watch ended")
                return "ended"

    async def _verify_loop(self, interval: float) -> str:
        while True:
            await self._verify_sleep(interval)
            if await self.verify():
                return "stalled"

    async def verify(self) -> bool:
        """Compare the workload routes the notifications built with the kernel's; True if the watch is
        stalled: a prefix that differs in two dumps ``recheck`` seconds apart, where the kernel held the same
        route both times (a route that merely changed during the first dump has its notification in flight).
        """
        first = self._differences(await self._dump_for_verify())
        if first:
            await self._verify_sleep(self._recheck)
            second = self._differences(await self._dump_for_verify())
            missed = sorted(dst for dst, kernel in first.items() if dst in second and second[dst] == kernel)
            if missed:
                log.error(
                    "the kernel route watch missed changes to %d workload routes (%s%s); subscribing again",
                    len(missed), ", ".join(missed[:5]), ", ..." if len(missed) > 5 else "",
                )  # fmt: skip
                return True
        if self._heartbeat is not None:
            self._heartbeat()
        return False

    async def _dump_for_verify(self) -> list[Route]:
        # Our own routes are not compared (below): skipped undecoded, they cost nothing at 100k.
        return await self._netlink.dump_routes(None, self._table, exclude_proto=self._exclude)

    def _differences(self, routes: list[Route]) -> dict[str, Mapping[int, str] | None]:
        """prefix -> the kernel's {metric: device} (None: absent), for each prefix we hold differently."""
        kernel: dict[str, dict[int, str]] = {}
        for route in routes:
            # Our own protocol's additions never reach the watch (kernel-side filter): not comparable.
            if route.proto != self._exclude and self._is_workload(route):
                kernel.setdefault(route.dst, {})[route.priority] = route.nexthops[0].ifname
        return {
            dst: kernel.get(dst)
            for dst in kernel.keys() | self._routes.keys()
            if kernel.get(dst) != self._routes.get(dst)
        }

    async def _load(self) -> None:
        routes = await self._netlink.dump_routes(None, self._table)
        self._loading = True  # a burst a dump starts is no propagation of a notification: not timed
        try:
            # Whatever we held may have changed unseen: all of it, and all the dump holds, is touched.
            for dst in self._routes:
                self._touch(dst)
            self._routes.clear()
            self._on_device.clear()
            for route in routes:
                if self._is_workload(route):
                    self._put(route.dst, route.priority, route.nexthops[0].ifname)
            for observer in self._dump_observers:
                observer(routes)
            self._changed()
        finally:
            self._loading = False
        if self._heartbeat is not None:
            self._heartbeat()

    def feed(self, event: RouteEvent | LinkEvent) -> None:
        """Apply one kernel event (``run`` calls this; tests may too)."""
        if isinstance(event, LinkEvent):
            if event.action != LINK_UP and event.ifname.startswith(self._prefix):
                self._drop_device(event.ifname)
            return
        route = event.route
        if route.table != self._table:
            return
        if event.action == ADD and self._is_workload(route):
            self._put(route.dst, route.priority, event.ifname)
        else:  # deleted, or overwritten by a non-workload route
            self._remove(route.dst, route.priority)

    def _put(self, dst: str, metric: int, ifname: str) -> None:
        metrics = self._routes.get(dst)
        held = None if metrics is None else metrics.get(metric)
        if held == ifname:
            return
        self._touch(dst)
        put(self._routes, dst, metric, ifname)
        if held is not None:
            self._unindex(held, dst)
        on_device = self._on_device.get(ifname)  # not setdefault: no new set per route of a known device
        if on_device is None:
            on_device = self._on_device[ifname] = set()
        on_device.add(dst)
        self._changed()

    def _remove(self, dst: str, metric: int) -> None:
        metrics = self._routes.get(dst)
        if metrics is None or metric not in metrics:
            return
        self._touch(dst)
        held = pop(self._routes, dst, metric)
        assert held is not None
        self._unindex(held, dst)
        self._changed()

    def _unindex(self, ifname: str, dst: str) -> None:
        """``dst`` no longer has the route it had on ``ifname``: drop it from the device's index unless
        another metric of it is on the same device."""
        rest = self._routes.get(dst)  # None, the common case: its only route went
        if rest is not None and ifname in rest.values():
            return
        keys = self._on_device[ifname]
        keys.discard(dst)
        if not keys:
            del self._on_device[ifname]

    def _drop_device(self, ifname: str) -> None:
        for dst in list(self._on_device.get(ifname, ())):
            for metric, device in list(self._routes.get(dst, {}).items()):
                if device == ifname:
                    self._remove(dst, metric)

    def _touch(self, dst: str) -> None:
        """Call before changing ``dst``: the first touch in a burst remembers what was reported."""
        if dst not in self._touched:
            self._touched[dst] = self.device(dst)

    def _is_workload(self, route: Route) -> bool:
        if route.type != UNICAST or len(route.nexthops) != 1:
            return False
        if not route.nexthops[0].ifname.startswith(self._prefix):
            return False
        # A host route: the length as the kernel's decoded (canonical) destination spells it, no parse.
        addr, _, length = route.dst.partition("/")
        return length == ("128" if ":" in addr else "32")

    def _changed(self) -> None:
        if self._soon is None and (self._flush is None or self._flush.done()):
            # Once per burst: the read time of the notifications being consumed, which start it.
            self.burst_read_at = None if self._loading else getattr(self._watch, "read_at", None)
            if self._debounce > 0:
                self._flush = asyncio.get_running_loop().create_task(self._report())
            else:  # the notifications already read are the burst: a callback, no task and no sleep(0)
                self._soon = asyncio.get_running_loop().call_soon(self._report_soon)

    def _report_soon(self) -> None:
        self._soon = None
        self._report_now()

    async def _report(self) -> None:
        await self._sleep(self._debounce)  # coalesce the burst that started with this change
        self._report_now()

    def _report_now(self) -> None:
        changes: dict[str, str | None] = {}
        for dst, before in self._touched.items():
            now = self.device(dst)
            if now != before:
                changes[dst] = now
        if changes or not self._reported:
            try:
                self._on_change(changes)
            except Exception:  # the consumer's bug must not stop the watch; the next burst reports it again
                log.exception("workload route consumer failed")
            else:
                self._touched.clear()
                self._reported = True
        else:
            self._touched.clear()
        self.ready.set()
