"""NexthopResolver: BIRD's ``gateway recursive`` for BGP next hops that are not on a connected subnet.

Stage: beside ``routes.resolve``. The daemon feeds it the kernel's main table (the watcher's dumps and
notifications, the same monitor socket ``routes.monitor`` reads); ``routes.resolve.kernel_routes`` asks it,
per BGP next hop, which kernel next hops to install.

Owns: a copy of the main table's routes that are NOT ours (connected subnets, static and DHCP routes,
Felix's routes), indexed by prefix length for longest-prefix match, and the set of next hops asked about,
so that a kernel change that cannot affect any of them does not cost a recomputation.

Rules (BIRD 1.6 ``gateway recursive``, which every Calico session template sets):
- the route the kernel would use for the next hop is found by longest prefix match, lowest metric first;
- a route without a gateway (a connected subnet, ``dev X``) means the next hop is directly reachable: it is
  installed as it is, and the kernel picks the device, as before resolution existed;
- a route with gateways means the next hop is behind them: the BGP route is installed via those gateways
  (their devices and ``onlink`` flags copied), ECMP if the covering route is multipath;
- no route, or a blackhole/unreachable/prohibit one, means unresolvable: the next hop is dropped, and a
  prefix left without next hops is not installed (BIRD keeps it unreachable in its own table).

Complicating factors:
- Only routes other programs put in the kernel are used, never our own BGP routes: the speaker computes
  kernel routes incrementally (a changed prefix at a time), so a resolution through another BGP route could
  go stale unnoticed. BIRD would also resolve through a BGP route whose next hop is direct; this does not.
- Until the first dump arrives nothing is known: ``ready`` is False and callers install next hops as they
  are, so a start-up does not withdraw every route for a moment.
- IPv4 removes a downed device's routes without notifications: a link going down or away drops every
  route through that device here too (IPv6 sends the deletions, which are then no-ops).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from routes.model import RT_TABLE_MAIN, RTPROT_BIRD, UNICAST, Nexthop, Route
from routes.netlink import ADD, LINK_UP, LinkEvent, RouteEvent
from routes.pools import Network, network

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Key = tuple[str, int]  # (dst, metric): the kernel's key within one table (tos is always 0 here)


class NexthopResolver:
    def __init__(self, *, proto: int = RTPROT_BIRD, table: int = RT_TABLE_MAIN) -> None:
        self.proto = proto
        self.table = table
        self._routes: dict[Key, Route] = {}
        # (version, prefix length) -> network -> routes there, for longest-prefix match
        self._index: dict[tuple[int, int], dict[Network, dict[int, Route]]] = {}
        self._queried: set[Address] = set()
        self._unresolved: set[str] = set()
        self.ready = False

    # -- kernel state ------------------------------------------------------------------------------

    def load(self, routes: Iterable[Route]) -> None:
        """Replace the view with a full dump of the table (the watcher's initial dump and re-dumps)."""
        self._routes.clear()
        self._index.clear()
        for route in routes:
            if self._relevant(route):
                self._store(route)
        self.ready = True

    def observe(self, event: RouteEvent | LinkEvent) -> bool:
        """Fold a kernel notification in; True when the resolution of a next hop in use may have changed."""
        if isinstance(event, LinkEvent):
            if event.action == LINK_UP:
                return False  # connected routes come back with their own notifications
            gone = [r for r in self._routes.values() if any(h.ifname == event.ifname for h in r.nexthops)]
            for route in gone:
                self._discard(route)
            return any(self._covers_queried(r) for r in gone)
        route = event.route
        if not self._relevant(route):
            return False
        if event.action == ADD:
            self._store(route)
        else:
            self._discard(route)
        return self._covers_queried(route)

    def _relevant(self, route: Route) -> bool:
        return route.table == self.table and route.proto != self.proto

    def _store(self, route: Route) -> None:
        net = network(route.dst)
        self._discard(route)
        self._routes[(route.dst, route.priority)] = route
        self._index.setdefault((net.version, net.prefixlen), {}).setdefault(net, {})[route.priority] = route

    def _discard(self, route: Route) -> None:
        old = self._routes.pop((route.dst, route.priority), None)
        if old is None:
            return
        net = network(old.dst)
        bucket = self._index[(net.version, net.prefixlen)]
        held = bucket[net]
        held.pop(old.priority, None)
        if not held:
            del bucket[net]

    def _covers_queried(self, route: Route) -> bool:
        net = network(route.dst)
        return any(addr.version == net.version and addr in net for addr in self._queried)

    # -- resolution --------------------------------------------------------------------------------

    def lookup(self, address: str) -> Route | None:
        """The route the kernel would use for ``address`` among the routes we track (LPM, lowest metric)."""
        addr = ipaddress.ip_address(address)
        for plen in range(addr.max_prefixlen, -1, -1):
            bucket = self._index.get((addr.version, plen))
            if not bucket:
                continue
            held = bucket.get(ipaddress.ip_network((addr, plen), strict=False))
            if held:
                return held[min(held)]
        return None

    def resolve(self, gateway: str) -> tuple[Nexthop, ...]:
        """Kernel next hops for the BGP next hop ``gateway``; () when it cannot be reached."""
        if not self.ready:
            return (Nexthop(gateway),)
        self._queried.add(ipaddress.ip_address(gateway))
        route = self.lookup(gateway)
        hops: tuple[Nexthop, ...] = ()
        if route is not None and route.type == UNICAST:
            vias = tuple(h for h in route.nexthops if h.gateway)
            hops = vias if vias else (Nexthop(gateway),)
        if not hops and gateway not in self._unresolved:
            log.warning("BGP next hop %s is unreachable in the kernel's table: its routes are not installed",
                        gateway)
            self._unresolved.add(gateway)
        elif hops and gateway in self._unresolved:
            log.info("BGP next hop %s is reachable again", gateway)
            self._unresolved.discard(gateway)
        return hops

    @property
    def unresolved(self) -> frozenset[str]:
        """BGP next hops found unreachable at their last resolution."""
        return frozenset(self._unresolved)
