"""Route ownership policy: which kernel routes are ours to touch, and when two routes are the same.

Stage: used by ``routes.table.RouteTable`` (the only writer of kernel routes). Kept apart from the
reconciler because these rules are the contract with Felix (docs/kernel-contract.md) and are worth
reading on their own.

Owns: the Felix device names, the table ranges we must stay out of, route comparison tolerant of how the
kernel reports routes back, and the one-line description used in conflict reports.
"""

from __future__ import annotations

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
