"""NexthopResolver: BIRD's ``gateway recursive`` for BGP next hops that are not on a connected subnet.

Stage: beside ``routes.resolve``. The daemon feeds it the kernel's main table (the watcher's dumps and
notifications, the same monitor socket ``routes.monitor`` reads); ``routes.resolve.kernel_routes`` asks it,
per BGP next hop, which kernel next hops to install.

Owns: a copy of the main table's routes that are NOT ours (connected subnets, static and DHCP routes,
Felix's routes), indexed by prefix length for longest-prefix match, and the set of next hops asked about,
so that a kernel change that cannot affect any of them does not cost a recomputation. Felix's workload /32s
are most of that table on a busy node (100k in the benchmark), so the index is keyed by integers and holds
one route per destination (a tuple only where one holds several metrics), with the next hops shared
between routes that have the same: no ``ipaddress`` objects or per-route dicts are kept.

Rules (BIRD 1.6 ``gateway recursive``, which every Calico session template sets):
- the route the kernel would use for the next hop is found by longest prefix match, lowest metric first;
- a route without a gateway (a connected subnet, ``dev X``) means the next hop is directly reachable: it is
  installed as it is, and the kernel picks the device, as before resolution existed;
- a route with gateways means the next hop is behind them: the BGP route is installed via those gateways
  (their devices and ``onlink`` flags copied), ECMP if the covering route is multipath;
- no route, or a blackhole/unreachable/prohibit one, means unresolvable: the next hop is dropped, and a
  prefix left without next hops is not installed (BIRD keeps it unreachable in its own table).

Complicating factors:
- Every notification of the main table reaches ``observe`` (Felix's 100k /32s in a burst): its prefix is
  parsed once into integers (no ``ipaddress`` object), the next hops asked about are kept as (version,
  integer) pairs, and the decoder's shared next-hop tuple is recognised by identity before any hashing.
- Only routes other programs put in the kernel are used, never our own BGP routes: the speaker computes
  kernel routes incrementally (a changed prefix at a time), so a resolution through another BGP route could
  go stale unnoticed. BIRD would also resolve through a BGP route whose next hop is direct; this does not.
- Until the first dump arrives nothing is known: ``ready`` is False and callers install next hops as they
  are, so a start-up does not withdraw every route for a moment.
- IPv4 removes a downed device's routes without notifications: a link going down or away drops every
  route through that device here too (IPv6 sends the deletions, which are then no-ops).
- Bounded memory (docs/bounds.md). The route index mirrors the kernel's table and shrinks with it. The next
  hops asked about would only grow (every next hop any peer ever sent), so they start over whenever the
  caller is about to ask again for every next hop in use: ``load()`` and an ``observe()`` that returns
  True are each followed by such a full recomputation (the daemon's contract with the speaker). Between
  two of them the set holds at most ``limit`` addresses; past that it stops remembering (counted once in
  ``calico_bgp_bound_hits_total{what="nexthop_queries"}``) and every change to the table counts as
  relevant until the next start-over: more recomputation, never a missed one. The unreachable next hops
  remembered for their log lines are bounded the same way (``nexthop_unresolved``).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from routes.bounds import BoundHits
from routes.model import (
    ADD,
    LINK_UP,
    RT_TABLE_MAIN,
    RTPROT_BIRD,
    UNICAST,
    LinkEvent,
    Nexthop,
    Route,
    RouteEvent,
)
from routes.pools import parse_prefix

log = logging.getLogger(__name__)

Bucket = tuple[int, int]  # (IP version, prefix length)
Address = tuple[int, int]  # (IP version, address as an integer): no ipaddress object per notification

# BGP next hops remembered between two full recomputations. One per peer router in practice (next hops are
# the nodes and routers that originate routes), so a few thousand even in a large cluster; each costs
# about 150 bytes, and each kernel notification is checked against all of them.
QUERIED_LIMIT = 16384


# Distinct next-hop sets shared (Felix's routes have one per workload device); past this many, sharing starts
# over: what is stored stays valid.
HOPS_LIMIT = 4096


def _each(held: Route | tuple[Route, ...]) -> tuple[Route, ...]:
    return (held,) if isinstance(held, Route) else held


def _slot(dst: str) -> tuple[Bucket, int]:
    _, version, first, length, _ = parse_prefix(dst)
    return (version, length), first


def _address(text: str) -> Address:
    addr = ipaddress.ip_address(text)
    return addr.version, int(addr)


class NexthopResolver:
    def __init__(
        self,
        *,
        proto: int = RTPROT_BIRD,
        table: int = RT_TABLE_MAIN,
        limit: int = QUERIED_LIMIT,
        bounds: BoundHits | None = None,
    ) -> None:
        self.proto = proto
        self.table = table
        # (version, prefix length) -> network address -> the route there (nearly always one), or the routes
        # there, lowest metric first
        self._index: dict[Bucket, dict[int, Route | tuple[Route, ...]]] = {}
        # One tuple per distinct next-hop set: each notification decodes its own (about 110 bytes a route).
        self._hops: dict[tuple[Nexthop, ...], tuple[Nexthop, ...]] = {}
        self._last_hops: tuple[Nexthop, ...] | None = None  # the last one stored, compared by identity
        self._limit = limit
        bounds = bounds if bounds is not None else BoundHits()
        self._queries_full = bounds.reporter("nexthop_queries")
        self._unresolved_full = bounds.reporter("nexthop_unresolved")
        self._queried: set[Address] = set()  # asked about since the last full recomputation
        self._overflow = False  # some were not remembered: every table change may matter
        self._unresolved: set[str] = set()
        self.ready = False

    # -- kernel state ------------------------------------------------------------------------------

    def load(self, routes: Iterable[Route]) -> None:
        """Replace the view with a full dump of the table (the watcher's initial dump and re-dumps)."""
        self._index.clear()
        for route in routes:
            if self._relevant(route):
                self._store(route, *_slot(route.dst))
        self.ready = True
        self._start_over()

    def observe(self, event: RouteEvent | LinkEvent) -> bool:
        """Fold a kernel notification in; True when the resolution of a next hop in use may have changed."""
        if isinstance(event, LinkEvent):
            if event.action == LINK_UP:
                return False  # connected routes come back with their own notifications
            gone = [
                r
                for bucket in self._index.values()
                for held in bucket.values()
                for r in _each(held)
                if any(h.ifname == event.ifname for h in r.nexthops)
            ]
            for route in gone:
                self._discard(route, *_slot(route.dst))
            return self._matters(any(self._covers_queried(r) for r in gone) or bool(gone and self._overflow))
        route = event.route
        if not self._relevant(route):
            return False
        _, version, first, length, last = parse_prefix(route.dst)  # once per notification
        if event.action == ADD:
            self._store(route, (version, length), first)
        else:
            self._discard(route, (version, length), first)
        if self._overflow:
            return self._matters(True)
        if first == last:  # a host route (Felix's workload routes, most of the traffic): one lookup
            return self._matters((version, first) in self._queried)
        return self._matters(any(v == version and first <= a <= last for v, a in self._queried))

    def _matters(self, relevant: bool) -> bool:
        if relevant:
            self._start_over()  # the caller now resolves every next hop in use again
        return relevant

    def _start_over(self) -> None:
        self._queried.clear()
        self._overflow = False

    def _relevant(self, route: Route) -> bool:
        return route.table == self.table and route.proto != self.proto

    def _store(self, route: Route, key: Bucket, address: int) -> None:
        hops = route.nexthops
        if hops is not self._last_hops:  # the decoder shares one tuple per next-hop set: no hashing then
            shared = self._hops.get(hops)
            if shared is None:
                if len(self._hops) >= HOPS_LIMIT:
                    self._hops.clear()
                shared = self._hops[hops] = hops
            hops = shared
        self._last_hops = hops
        if hops is not route.nexthops:
            # An equal tuple in place of the route's own: its value and hash are unchanged for everyone who
            # holds the route, and a copy of the route (dataclasses.replace, 2 us) would cost 0.2 s of CPU
            # per 100k of Felix's routes on the notification path.
            object.__setattr__(route, "nexthops", hops)
        bucket = self._index.get(key)
        if bucket is None:
            bucket = self._index[key] = {}
        held = bucket.get(address)
        if held is None:
            bucket[address] = route
            return
        others = tuple(r for r in _each(held) if r.priority != route.priority)
        bucket[address] = tuple(sorted((*others, route), key=lambda r: r.priority)) if others else route

    def _discard(self, route: Route, key: Bucket, address: int) -> None:
        bucket = self._index.get(key)
        if not bucket or address not in bucket:
            return
        held = tuple(r for r in _each(bucket[address]) if r.priority != route.priority)
        if held:
            bucket[address] = held if len(held) > 1 else held[0]
        else:
            del bucket[address]

    def _covers_queried(self, route: Route) -> bool:
        _, version, first, length, last = parse_prefix(route.dst)
        if first == last:  # a host route (Felix's workload routes, most of the traffic): one lookup
            return (version, first) in self._queried
        return any(v == version and first <= a <= last for v, a in self._queried)

    # -- resolution --------------------------------------------------------------------------------

    def lookup(self, address: str) -> Route | None:
        """The route the kernel would use for ``address`` among the routes we track (LPM, lowest metric)."""
        addr = ipaddress.ip_address(address)
        value, width = int(addr), addr.max_prefixlen
        for plen in range(width, -1, -1):
            bucket = self._index.get((addr.version, plen))
            if not bucket:
                continue
            held = bucket.get(value & ~((1 << (width - plen)) - 1))
            if held is not None:
                return _each(held)[0]
        return None

    def resolve(self, gateway: str) -> tuple[Nexthop, ...]:
        """Kernel next hops for the BGP next hop ``gateway``; () when it cannot be reached."""
        if not self.ready:
            return (Nexthop(gateway),)
        self._remember(_address(gateway))
        route = self.lookup(gateway)
        hops: tuple[Nexthop, ...] = ()
        if route is not None and route.type == UNICAST:
            vias = tuple(h for h in route.nexthops if h.gateway)
            hops = vias if vias else (Nexthop(gateway),)
        if not hops and gateway not in self._unresolved:
            if self._note_unresolved(gateway):
                log.warning("BGP next hop %s is unreachable in the kernel's table: its routes are not "
                            "installed", gateway)
        elif hops and gateway in self._unresolved:
            log.info("BGP next hop %s is reachable again", gateway)
            self._unresolved.discard(gateway)
        return hops

    def _remember(self, address: Address) -> None:
        if address in self._queried or self._overflow:
            return
        if len(self._queried) < self._limit:
            self._queried.add(address)
            return
        self._overflow = True
        self._queries_full()
        log.warning("more than %d BGP next hops in use: every kernel route change now recomputes the "
                    "routes until the set starts over", self._limit)

    def _note_unresolved(self, gateway: str) -> bool:
        """Remember ``gateway`` as unreachable, so that it is logged once; False when there is no room (it
        is then not logged at all: thousands of unreachable next hops would flood the log anyway)."""
        if len(self._unresolved) >= self._limit:
            # Keep only the ones still asked about; the others left BGP (or were not asked again yet).
            self._unresolved = {g for g in self._unresolved if _address(g) in self._queried}
            if len(self._unresolved) >= self._limit:
                self._unresolved_full()
                return False
        self._unresolved.add(gateway)
        return True

    @property
    def unresolved(self) -> frozenset[str]:
        """BGP next hops found unreachable at their last resolution."""
        return frozenset(self._unresolved)
