"""Route ownership policy: which kernel routes are ours to touch, and when two routes are the same.

Stage: used by ``routes.table.RouteTable`` (the only writer of kernel routes). Kept apart from the
reconciler because these rules are the contract with Felix (docs/kernel-contract.md) and are worth
reading on their own.

Owns: the Felix device names, the table ranges we must stay out of, route comparison tolerant of how the
kernel reports routes back, and the one-line description used in conflict reports (shared between the
routes that have the same, as the kernel watch's decoder shares their next hops).
"""

from __future__ import annotations

import sys

from routes.model import Route

FELIX_DEVICE_PREFIXES = ("cali", "bpf")
FELIX_DEVICE_NAMES = ("vxlan.calico", "vxlan-v6.calico")
FELIX_DEVICE_SUFFIXES = (".cali",)


def is_felix_device(ifname: str) -> bool:
    """Devices whose routes belong to Felix, whatever their protocol."""
    return (
        ifname.startswith(FELIX_DEVICE_PREFIXES)
        or ifname in FELIX_DEVICE_NAMES
        or ifname.endswith(FELIX_DEVICE_SUFFIXES)
    )


def table_refusal(table: int) -> str:
    """Why ``table`` must not be programmed, or "" when it may."""
    if 1 <= table <= 250:
        return f"table {table} is in Felix's RouteTableRanges (1-250)"
    if table in (0, 252, 255):
        return f"table {table} is reserved (unspec/compat/local)"
    return ""


def same_route(want: Route, have: Route) -> bool:
    """``have`` (possibly read back from the kernel) implements ``want``; an unset device in ``want``
    matches the device the kernel resolved."""
    if (want.dst, want.type, want.table, want.proto, want.priority) != (
        have.dst, have.type, have.table, have.proto, have.priority
    ) or len(want.nexthops) != len(have.nexthops):
        return False
    theirs = sorted(have.nexthops, key=lambda h: (h.gateway, h.onlink, h.ifname))
    mine = sorted(want.nexthops, key=lambda h: (h.gateway, h.onlink, h.ifname))
    return all(
        (w.gateway, w.onlink) == (h.gateway, h.onlink) and (not w.ifname or w.ifname == h.ifname)
        for w, h in zip(mine, theirs, strict=True)
    )


def describe(route: Route) -> str:
    devs = ",".join(sorted({h.ifname for h in route.nexthops if h.ifname}))
    return f"{route.type} proto {route.proto} metric {route.priority}" + (f" dev {devs}" if devs else "")


class SharedDescriptions:
    """``describe``'s answers, one string object for the routes that share a next-hop tuple.

    Every foreign route the kernel watch reports is described (Felix's 100k /32s in a burst, 2 us each),
    and the decoder hands out one shared next-hop tuple per device, so a few entries answer them all. Keyed
    by (type, protocol, metric, identity of the tuple); each entry holds its tuple, so that identity cannot
    name another tuple while the entry lives. Bounded: past ``limit`` entries it starts over.
    """

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._held: dict[tuple[str, int, int, int], tuple[tuple[object, ...], str]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def __call__(self, route: Route) -> str:
        hops = route.nexthops
        key = (route.type, route.proto, route.priority, id(hops))
        held = self._held.get(key)
        if held is not None and held[0] is hops:
            return held[1]
        if len(self._held) >= self._limit:
            self._held.clear()
        text = sys.intern(describe(route))
        self._held[key] = (hops, text)
        return text
