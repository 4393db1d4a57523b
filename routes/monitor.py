"""WorkloadRouteWatcher: follows the host routes Felix writes for local workloads, event-driven.

Stage: the kernel-to-BGP direction. Felix writes ``<podIP>/32 dev caliXXXX scope link proto boot`` (/128
for IPv6) in the main table for every local workload; BIRD learns them with ``protocol kernel { learn; }``.
This watcher keeps the set of such prefixes and hands it to ``routes.export.local_exports`` via the
daemon's ``on_change`` callback. It also fans every event out to ``observers`` (the daemon passes
``RouteTable.observe`` and ``NexthopResolver.observe``) and every full dump of the table to
``dump_observers`` (``NexthopResolver.load``; a re-dump after lost notifications also tells the daemon to
read its own routes back), so one monitor socket serves the whole package.

Owns: the map (prefix, metric) -> device of workload routes, the coalescing of bursts, and recovery from
lost notifications.

Design and complicating factors:
- No polling. The watch is subscribed BEFORE the initial dump, so a route added in between is seen as an
  event; replaying such an event over the dump is harmless (last event per key wins).
- IPv4 removes the routes of a deleted or downed device without RTM_DELROUTE (the pod's veth is deleted
  by the CNI before Felix cleans up), so link events drop every prefix on that device.
- A route replaced at the same kernel key by a non-workload route is an ``add`` of something else: the
  key is dropped. Any protocol on a cali* device counts (Felix's default is proto boot, 3).
- Lost notifications (ENOBUFS -> ``WatchOverflow``) trigger a fresh dump; the socket stays subscribed.
  The kernel-side filter drops additions of our own protocol (``exclude_proto``) so programming 100k BGP
  routes does not flood this socket; deletions of our routes pass, so ``RouteTable`` hears at once when
  someone else removes one.
- ``on_change`` is a plain synchronous callable receiving the full frozenset of prefixes, called once per
  burst (first change + ``debounce`` seconds) and only when the set differs from the last call. It must
  not block: hand the set to a queue or an event. The first call comes after the initial dump, even when
  the set is empty, so the consumer knows the kernel has been read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from routes.model import RT_TABLE_MAIN, RTPROT_BIRD, UNICAST, Route
from routes.netlink import ADD, LINK_UP, LinkEvent, Netlink, RouteEvent, WatchOverflow
from routes.pools import network

log = logging.getLogger(__name__)

WORKLOAD_DEVICE_PREFIX = "cali"


class WorkloadRouteWatcher:
    def __init__(
        self,
        netlink: Netlink,
        on_change: Callable[[frozenset[str]], None],
        *,
        debounce: float = 0.05,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        device_prefix: str = WORKLOAD_DEVICE_PREFIX,
        table: int = RT_TABLE_MAIN,
        exclude_proto: int | None = RTPROT_BIRD,
        observers: Sequence[Callable[[RouteEvent | LinkEvent], object]] = (),
        dump_observers: Sequence[Callable[[list[Route]], object]] = (),
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
        self._routes: dict[tuple[str, int], str] = {}
        self._reported: frozenset[str] | None = None
        self._flush: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()  # set after the first on_change call

    @property
    def prefixes(self) -> frozenset[str]:
        return frozenset(dst for dst, _ in self._routes)

    @property
    def devices(self) -> dict[str, str]:
        """prefix -> workload device (lowest metric wins when a prefix sits on two devices)."""
        return {dst: dev for (dst, _), dev in sorted(self._routes.items(), key=lambda kv: -kv[0][1])}

    async def run(self) -> None:
        """Watch until cancelled."""
        watch = self._netlink.watch(exclude_proto=self._exclude)
        try:
            await self._load()
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
                    return  # the watch was closed
        finally:
            watch.close()
            if self._flush is not None:
                self._flush.cancel()

    async def _load(self) -> None:
        routes = await self._netlink.dump_routes(None, self._table)
        self._routes = {(r.dst, r.priority): r.nexthops[0].ifname for r in routes if self._is_workload(r)}
        for observer in self._dump_observers:
            observer(routes)
        self._changed()

    def feed(self, event: RouteEvent | LinkEvent) -> None:
        """Apply one kernel event (``run`` calls this; tests may too)."""
        if isinstance(event, LinkEvent):
            if event.action != LINK_UP and event.ifname.startswith(self._prefix):
                self._drop_device(event.ifname)
            return
        route = event.route
        if route.table != self._table:
            return
        key = (route.dst, route.priority)
        if event.action == ADD and self._is_workload(route):
            if self._routes.get(key) != event.ifname:
                self._routes[key] = event.ifname
                self._changed()
        elif self._routes.pop(key, None) is not None:  # deleted, or overwritten by a non-workload route
            self._changed()

    def _drop_device(self, ifname: str) -> None:
        gone = [key for key, dev in self._routes.items() if dev == ifname]
        for key in gone:
            del self._routes[key]
        if gone:
            self._changed()

    def _is_workload(self, route: Route) -> bool:
        if route.type != UNICAST or len(route.nexthops) != 1:
            return False
        if not route.nexthops[0].ifname.startswith(self._prefix):
            return False
        net = network(route.dst)
        return net.prefixlen == net.max_prefixlen

    def _changed(self) -> None:
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._report())

    async def _report(self) -> None:
        await self._sleep(self._debounce)  # coalesce the burst that started with this change
        current = self.prefixes
        if current != self._reported:
            try:
                self._on_change(current)
            except Exception:  # the consumer's bug must not stop the watch; the next change retries
                log.exception("workload route consumer failed")
            else:
                self._reported = current
        self.ready.set()

