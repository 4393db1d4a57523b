"""Kernel route value types shared by the routes package.

Stage: the kernel dataplane's vocabulary. ``resolve`` produces desired ``Route`` values, ``table`` compares
them with what the kernel holds (read back as the same type) and programs the difference.

Owns: frozen, hashable types only. A ``Route`` is keyed by (table, dst); everything else is its value, so a
changed next hop is a ``replace`` of the same key, never a delete + add (no window without a route).
"""

from __future__ import annotations

from dataclasses import dataclass

RTPROT_BOOT = 3
RTPROT_BIRD = 12  # BIRD's protocol number: what Calico's kernel side expects BGP-learned routes to carry
RT_TABLE_MAIN = 254

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
