"""The routes package's vocabulary: kernel route values, kernel events and the ``Netlink`` seam.

Stage: shared by every stage of the kernel dataplane. ``resolve`` produces desired ``Route`` values,
``table`` compares them with what the kernel holds (read back as the same type) and programs the
difference, ``monitor``/``recursive``/``addresses`` fold kernel events. ``routes.netlink`` is the adapter
that implements ``Netlink`` over real sockets; ``routes.testing.FakeNetlink`` implements it in memory.

Owns: frozen, hashable values, the two exceptions a ``Netlink`` raises, and the protocols themselves. It
imports no socket or netlink library, so the pure modules above depend only on this (an import-linter
contract holds them to it). A ``Route`` is keyed by (table, dst); everything else is its value, so a
changed next hop is a ``replace`` of the same key, never a delete + add (no window without a route).

Complicating factor: read-back is not write-back. The kernel stores an IPv6 route written with metric 0 at
metric 1024; ``kernel_form`` is that rule, shared by the reconciler (comparing) and the fake (storing).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

RTPROT_BOOT = 3
RTPROT_BIRD = 12  # BIRD's protocol number: what Calico's kernel side expects BGP-learned routes to carry
RT_TABLE_MAIN = 254
IP6_RT_PRIO_USER = 1024  # the metric the kernel gives an IPv6 route written with metric 0

UNICAST = "unicast"
BLACKHOLE = "blackhole"


@dataclass(frozen=True, order=True, slots=True)
class Nexthop:
    gateway: str = ""  # "" for a device-only next hop
    ifname: str = ""  # "" lets the kernel resolve the device from the gateway
    onlink: bool = False  # tunl0 routes: gateway is not on the device's subnet


@dataclass(frozen=True, order=True, slots=True)
class Route:
    dst: str  # CIDR, normalised (ipaddress.ip_network(...).with_prefixlen)
    type: str = UNICAST  # UNICAST | BLACKHOLE
    nexthops: tuple[Nexthop, ...] = ()  # sorted; more than one = ECMP multipath
    table: int = RT_TABLE_MAIN
    proto: int = RTPROT_BIRD
    priority: int = 0  # the metric; 0 as BIRD 1.6 writes by default

    @property
    def key(self) -> tuple[int, str]:
        return (self.table, self.dst)

    @property
    def family(self) -> int:
        return 10 if ":" in self.dst else 2


def kernel_form(route: Route) -> Route:
    """``route`` as the kernel will report it back (IPv6 metric 0 is stored as 1024), next hops sorted."""
    hops = route.nexthops if len(route.nexthops) < 2 else tuple(sorted(set(route.nexthops)))
    if route.priority == 0 and ":" in route.dst:
        return replace(route, priority=IP6_RT_PRIO_USER, nexthops=hops)
    return route if hops == route.nexthops else replace(route, nexthops=hops)


# -- kernel events ---------------------------------------------------------------------------------

ADD = "add"
DEL = "del"
LINK_UP = "up"
LINK_DOWN = "down"
LINK_DEL = "del"


@dataclass(frozen=True, slots=True)
class RouteEvent:
    action: str  # ADD (also a replace) | DEL
    route: Route
    ifname: str  # device of the first next hop; "" for blackholes and devices already gone


@dataclass(frozen=True, slots=True)
class LinkEvent:
    action: str  # LINK_UP | LINK_DOWN | LINK_DEL
    ifindex: int
    ifname: str


@dataclass(frozen=True, slots=True)
class InterfaceAddress:
    ifindex: int
    address: str  # interface form: "10.0.0.11/24", "fd00::11/64"


@dataclass(frozen=True, slots=True)
class AddressEvent:
    action: str  # ADD (also a change of flags or lifetimes) | DEL
    address: InterfaceAddress


def errno_text(code: int, detail: str = "") -> str:
    """The error string ``Netlink.apply`` reports: ``"EEXIST: File exists"`` plus the kernel's extack text."""
    text = f"{errno.errorcode.get(code, str(code))}: {os.strerror(code)}"
    return f"{text} ({detail})" if detail else text


class WatchOverflow(Exception):
    """Notifications were lost (ENOBUFS). Re-read the state, then continue iterating the same watch."""


class NetlinkError(OSError):
    """A request as a whole failed (a dump refused, the socket broken); per-route errors are returned."""


# -- the kernel seam -------------------------------------------------------------------------------


class RouteWatch(Protocol):
    def __aiter__(self) -> RouteWatch: ...

    async def __anext__(self) -> RouteEvent | LinkEvent: ...

    def close(self) -> None: ...


class AddressWatch(Protocol):
    def __aiter__(self) -> AddressWatch: ...

    async def __anext__(self) -> AddressEvent: ...

    def close(self) -> None: ...


class Netlink(Protocol):
    async def dump_routes(
        self, proto: int | None = None, table: int = RT_TABLE_MAIN, *, exclude_proto: int | None = None
    ) -> list[Route]:
        """Routes of ``table`` (all protocols when ``proto`` is None, less ``exclude_proto``'s), devices
        named. Excluded routes are skipped before they are decoded: a periodic dump that only wants the
        workload routes does not pay for 100k BGP routes."""

    async def apply(
        self, replaces: Sequence[Route], deletes: Sequence[Route], creates: Sequence[Route] = ()
    ) -> list[tuple[Route, str]]:
        """Replace (create or overwrite), exclusively create (EEXIST if the kernel key is taken) and delete
        (only routes of the route's protocol). Returns the failures as (route, "ENAME: text")."""

    async def link_index(self, name: str) -> int | None: ...

    async def link_names(self) -> dict[int, str]: ...

    def watch(self, *, exclude_proto: int | None = None) -> RouteWatch:
        """Subscribe now; iterate for RouteEvent / LinkEvent. Additions of ``exclude_proto`` routes are
        dropped (in the kernel), and so are the deletions of them that this adapter's ``apply`` made;
        deletions by anyone else are delivered."""

    async def dump_addresses(self) -> list[InterfaceAddress]:
        """Every IPv4 and IPv6 address on every interface."""

    def watch_addresses(self) -> AddressWatch:
        """Subscribe now; iterate for AddressEvent (``WatchOverflow`` when some were lost)."""

    def close(self) -> None: ...
