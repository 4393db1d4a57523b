"""FakeNetlink: an in-memory kernel routing table behind the ``routes.model.Netlink`` protocol.

Stage: test seam for ``routes.table`` and ``routes.monitor`` (and for labs that run without root).

Owns: a model of the kernel behaviour the package depends on, deliberately including the awkward parts:
- routes are keyed (table, dst, metric); NLM_F_EXCL creates fail with EEXIST on a taken key, replaces
  overwrite whatever holds the key (even a foreign route, as the real kernel does);
- deletes only match the route's protocol (ESRCH otherwise), and for IPv4 its type too;
- IPv6 metric 0 is stored as 1024, and a gateway-only next hop reads back with the resolved device;
- a downed or deleted device loses its IPv4 routes WITHOUT route notifications (IPv6 ones with them);
  a new device starts down;
- notifications go to every open watch, minus additions of ``exclude_proto`` routes and the deletions of
  them that ``apply`` made (someone else's deletions pass, as with the kernel-side filter); ``overflow()``
  simulates ENOBUFS, ``deafen()`` a watch that silently stops hearing, ``break_watches()`` a failed socket;
  a watch's ``read_at`` is the ``clock`` reading at which it handed out its latest event, as the real
  one's is that of its latest read;
- interface addresses (``add_address``, ``remove_address``) are dumped and notified on their own watches,
  as the real ones are on their own socket; deleting a link takes its addresses with it.
Tests inject foreign routes (``add_foreign``), errors (``failures``) and inspect ``routes`` and ``calls``.
``tests/netns/test_netlink_contract.py`` runs the same tests against this fake and the real kernel: where
they disagree, this model is what gets fixed.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from routes.model import (
    ADD,
    DEL,
    LINK_DEL,
    LINK_DOWN,
    LINK_UP,
    RT_TABLE_MAIN,
    AddressEvent,
    InterfaceAddress,
    LinkEvent,
    Nexthop,
    Route,
    RouteEvent,
    WatchOverflow,
    errno_text,
    kernel_form,
)

Key = tuple[int, str, int]


class FakeNetlink:
    def __init__(
        self,
        links: Iterable[str] = ("lo", "eth0", "tunl0"),
        default_device: str = "eth0",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock  # stamps each watch's read_at
        self.routes: dict[Key, Route] = {}
        self.links: dict[str, int] = {name: i for i, name in enumerate(links, start=1)}
        self.down: set[str] = set()
        self.default_device = default_device  # what a gateway-only next hop resolves to on read-back
        self.failures: dict[str, str] = {}  # dst -> "ENAME: text" returned for every write of that dst
        self.calls: list[tuple[str, Route]] = []  # ("replace" | "create" | "delete", route)
        self.dumps = 0
        self._watches: list[FakeWatch] = []
        self.addresses: dict[InterfaceAddress, None] = {}  # insertion-ordered set
        self._address_watches: list[FakeWatch] = []

    # -- Netlink protocol --------------------------------------------------------------------------

    async def dump_routes(
        self, proto: int | None = None, table: int = RT_TABLE_MAIN, *, exclude_proto: int | None = None
    ) -> list[Route]:
        self.dumps += 1
        return [
            r for (t, _, _), r in self.routes.items()
            if t == table and (proto is None or r.proto == proto) and r.proto != exclude_proto
        ]

    async def apply(
        self, replaces: Sequence[Route], deletes: Sequence[Route], creates: Sequence[Route] = ()
    ) -> list[tuple[Route, str]]:
        errors: list[tuple[Route, str]] = []
        for op, batch in (("replace", replaces), ("create", creates), ("delete", deletes)):
            for route in batch:
                self.calls.append((op, route))
                text = self._delete(route) if op == "delete" else self._write(route, op == "create")
                if text:
                    errors.append((route, text))
        return errors

    async def link_index(self, name: str) -> int | None:
        return self.links.get(name)

    async def link_names(self) -> dict[int, str]:
        return {i: n for n, i in self.links.items()}

    def watch(self, *, exclude_proto: int | None = None) -> FakeWatch:
        watch = FakeWatch(self, exclude_proto)
        self._watches.append(watch)
        return watch

    async def dump_addresses(self) -> list[InterfaceAddress]:
        return list(self.addresses)

    def watch_addresses(self) -> FakeWatch:
        watch = FakeWatch(self, None, self._address_watches)
        self._address_watches.append(watch)
        return watch

    def close(self) -> None:
        for watch in [*self._watches, *self._address_watches]:
            watch.close()

    # -- kernel model ------------------------------------------------------------------------------

    @staticmethod
    def _key(route: Route) -> Key:
        prio = kernel_form(route).priority
        return (route.table, route.dst, prio)

    def _write(self, route: Route, exclusive: bool) -> str:
        if route.dst in self.failures:
            return self.failures[route.dst]
        key = self._key(route)
        if exclusive and key in self.routes:
            return errno_text(errno.EEXIST)
        hops = []
        for hop in route.nexthops:
            device = hop.ifname or self.default_device
            if device not in self.links:
                return errno_text(errno.ENODEV)
            if device in self.down:
                return errno_text(errno.ENETDOWN)
            hops.append(Nexthop(hop.gateway, device, hop.onlink))
        stored = replace(route, priority=key[2], nexthops=tuple(sorted(hops)))
        self.routes[key] = stored
        self._emit(RouteEvent(ADD, stored, _device(stored)))
        return ""

    def _delete(self, route: Route) -> str:
        key = self._key(route)
        held = self.routes.get(key)
        if held is None or held.proto != route.proto:
            return errno_text(errno.ESRCH)
        if held.type != route.type and ":" not in route.dst:  # IPv6 deletes ignore the type
            return errno_text(errno.ESRCH)
        del self.routes[key]
        self._emit(RouteEvent(DEL, held, _device(held)), own=True)
        return ""

    def add_foreign(self, route: Route) -> None:
        """Another writer (Felix, the kernel, an admin) adds or replaces a route at its key."""
        self._key_store(route)

    def remove(self, route: Route) -> None:
        """Another writer deletes the route at ``route``'s key, whoever owns it."""
        held = self.routes.pop(self._key(route), None)
        if held is not None:
            self._emit(RouteEvent(DEL, held, _device(held)))

    def _key_store(self, route: Route) -> None:
        key = self._key(route)
        stored = replace(route, priority=key[2])
        self.routes[key] = stored
        self._emit(RouteEvent(ADD, stored, _device(stored)))

    def add_link(self, name: str) -> None:
        """A device is created; as in the kernel, it starts down (``set_link(name, True)`` raises it)."""
        self.links[name] = max(self.links.values(), default=0) + 1
        self.down.add(name)
        self._emit(LinkEvent(LINK_DOWN, self.links[name], name))

    def set_link(self, name: str, up: bool) -> None:
        if up:
            self.down.discard(name)
            self._emit(LinkEvent(LINK_UP, self.links[name], name))
        else:
            self.down.add(name)
            self._flush_device(name)
            self._emit(LinkEvent(LINK_DOWN, self.links[name], name))

    def add_address(self, ifname: str, address: str) -> None:
        """An address in interface form (``10.0.0.11/24``) appears on ``ifname``."""
        held = InterfaceAddress(self.links[ifname], address)
        self.addresses[held] = None
        self._emit_address(AddressEvent(ADD, held))

    def remove_address(self, ifname: str, address: str) -> None:
        held = InterfaceAddress(self.links[ifname], address)
        if held in self.addresses:
            del self.addresses[held]
            self._emit_address(AddressEvent(DEL, held))

    def _emit_address(self, event: AddressEvent) -> None:
        for watch in self._address_watches:
            watch.queue.put_nowait(event)

    def delete_link(self, name: str) -> None:
        self._flush_device(name)
        for held in [a for a in self.addresses if a.ifindex == self.links[name]]:
            del self.addresses[held]
            self._emit_address(AddressEvent(DEL, held))
        index = self.links.pop(name)
        self.down.discard(name)
        self._emit(LinkEvent(LINK_DEL, index, name))

    def _flush_device(self, name: str) -> None:
        for key, route in list(self.routes.items()):
            if any(h.ifname == name for h in route.nexthops):
                del self.routes[key]
                if ":" in route.dst:  # IPv6 notifies; IPv4 does not
                    self._emit(RouteEvent(DEL, route, name))

    def overflow(self) -> None:
        """The next read on every watch reports lost notifications."""
        for watch in [*self._watches, *self._address_watches]:
            watch.lost = True
            watch.queue.put_nowait(None)

    def deafen(self) -> None:
        """Every open route watch stops hearing anything, yet stays open: a silently stalled socket."""
        for watch in self._watches:
            watch.deaf = True

    def break_watches(self, error: OSError) -> None:
        """The next read on every open route watch raises ``error`` (a failed socket)."""
        for watch in self._watches:
            watch.error = error
            watch.queue.put_nowait(None)

    def _emit(self, event: RouteEvent | LinkEvent, own: bool = False) -> None:
        """``own``: a deletion this adapter's ``apply`` asked for (the kernel filter knows it by port id)."""
        for watch in self._watches:
            if watch.deaf:
                continue
            ours = isinstance(event, RouteEvent) and event.route.proto == watch.exclude_proto
            if ours and (event.action == ADD or own):
                continue
            watch.queue.put_nowait(event)


class FakeWatch:
    def __init__(
        self, owner: FakeNetlink, exclude_proto: int | None, registry: list[FakeWatch] | None = None
    ) -> None:
        self.owner = owner
        self.exclude_proto = exclude_proto
        self._registry = owner._watches if registry is None else registry
        self.queue: asyncio.Queue[RouteEvent | LinkEvent | AddressEvent | None] = asyncio.Queue()
        self.lost = False
        self.closed = False
        self.deaf = False
        self.error: OSError | None = None
        self.read_at: float | None = None

    def __aiter__(self) -> FakeWatch:
        return self

    async def __anext__(self) -> RouteEvent | LinkEvent | AddressEvent:
        while True:
            if self.error is not None:
                raise self.error
            if self.lost:
                self.lost = False
                raise WatchOverflow("simulated ENOBUFS")
            if self.closed:
                raise StopAsyncIteration
            event = await self.queue.get()
            if event is not None:
                self.read_at = self.owner.clock()
                return event

    def close(self) -> None:
        self.closed = True
        self.queue.put_nowait(None)
        if self in self._registry:
            self._registry.remove(self)


def _device(route: Route) -> str:
    return route.nexthops[0].ifname if route.nexthops else ""


class FakeRouteTable:
    """The part of ``routes.table.RouteTable`` the speaker drives, dict-backed: the desired routes only.

    Every route is admitted (the real table refuses routes outside its table; speaker tests never build
    those), and ``apply`` only counts. ``tests/unit/routes/test_routes_table.py`` holds it to the real
    table's desired set over the same calls.
    """

    def __init__(self) -> None:
        self.desired: dict[str, Route] = {}
        self.conflicts: dict[str, str] = {}
        self.refused: dict[str, str] = {}
        self.applies = 0

    def set_desired(self, routes: Iterable[Route]) -> None:
        self.desired = {route.dst: route for route in routes}

    def update(self, upserts=(), removes: Iterable[str] = ()) -> None:
        for dst in removes:
            self.desired.pop(dst, None)
        routes = upserts.values() if isinstance(upserts, dict) else upserts
        self.desired.update((route.dst, route) for route in routes)

    async def apply(self) -> None:
        self.applies += 1

    def by_dst(self) -> dict[str, Route]:
        return dict(self.desired)
