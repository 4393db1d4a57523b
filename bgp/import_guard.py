"""The route import guard: which learned prefixes never reach the Loc-RIB or the kernel (pure).

Stage: the receive side of the route distributor, between the Adj-RIB-In and best-path selection. The
speaker asks ``ImportScreen.refuses`` for every prefix it selects; a refused prefix keeps its paths in the
Adj-RIB-In (so that it can be accepted again when the node's addresses change) but is neither installed nor
re-advertised, and ``calico-bgp routes`` lists it with the reason.

Owns: the table of address classes no peer may route for us, the derivation of the node's directly connected
subnets from its interface addresses and its Node resource, and the refused prefixes with their reasons.

Rules, per prefix:
- inside a special-purpose block (RFC 6890): "this network" 0.0.0.0/8 and the unspecified ::/128, loopback,
  link-local, multicast, IPv4 limited broadcast, IPv4-mapped IPv6. Those addresses never leave a host or a
  link, so a route for them can only misdirect. A prefix that covers such a block (the default route)
  is an ordinary route.
- strictly more specific than a subnet this node is directly connected to: the node reaches those addresses
  on the link (ARP / neighbour discovery), so a BGP route inside it would pull traffic for on-link
  neighbours, other nodes included, through the peer. The exact subnet is not refused here: the kernel's
  connected route already holds that destination and the route table leaves it to that foreign route.
- exception: a prefix inside one of this node's own IPAM blocks is never refused as on-link. A /32 there is
  an IP another node borrowed from our block, and installing it is how its pod is reached.

Complicating factors:
- "Connected" comes from the kernel's interface addresses, which include host addresses that do not make a
  subnet (the /32 Felix puts on tunl0 or vxlan.calico, the IPv6 /128s) and link-local ones; those are left
  out. The Node resource's CIDR (spec.bgp.ipv4Address/ipv6Address) is merged in, so the guard holds before
  the first address dump and on a node whose addresses are not visible to us.
- A strange string from ExaBGP (unparsable, or with an IPv6 scope id, which ``ipaddress`` accepts) is
  refused with reason "malformed" rather than raised: it must cost its route only.
- This runs for every prefix of a 100k-route burst: prefixes are compared as integer spans
  (``routes.pools.parse_prefix``), never as ``ipaddress`` objects.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from bgp.limits import LogBudget
from bgp.rib import Path
from routes.pools import parse_prefix

log = logging.getLogger(__name__)

MALFORMED = "malformed"
UNSPECIFIED = "unspecified"
LOOPBACK = "loopback"
LINK_LOCAL = "link-local"
MULTICAST = "multicast"
BROADCAST = "broadcast"
IPV4_MAPPED = "ipv4-mapped"
ON_LINK = "on-link"

# (block, reason): a prefix inside a block is refused with the reason.
SPECIAL_BLOCKS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", UNSPECIFIED),
    ("127.0.0.0/8", LOOPBACK),
    ("169.254.0.0/16", LINK_LOCAL),
    ("224.0.0.0/4", MULTICAST),
    ("255.255.255.255/32", BROADCAST),
    ("::/128", UNSPECIFIED),
    ("::1/128", LOOPBACK),
    ("::ffff:0:0/96", IPV4_MAPPED),
    ("fe80::/10", LINK_LOCAL),
    ("ff00::/8", MULTICAST),
)

# (version, first address, last address, prefix length)
_Span = tuple[int, int, int, int]


def _span(cidr: str) -> _Span:
    _, version, first, length, last = parse_prefix(cidr)
    return version, first, last, length


_SPECIAL: tuple[tuple[_Span, str], ...] = tuple((_span(c), reason) for c, reason in SPECIAL_BLOCKS)
_V4_SPECIAL_OCTETS = frozenset({0, 127, 169})  # and 224 and above


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # one of the reason constants: a metric label value
    detail: str  # what `calico-bgp routes` shows

    def __str__(self) -> str:
        return self.detail


def special_class(cidr: str) -> str | None:
    """The reason a prefix inside a special-purpose block is refused, None for an ordinary prefix."""
    version, first, last, _ = _span(cidr)
    return _special(version, first, last)


def _special(version: int, first: int, last: int) -> str | None:
    # Most prefixes are IPv4 and outside every special block: the first octet rules that out cheaply.
    if version == 4 and not (first >> 24 in _V4_SPECIAL_OCTETS or first >= 224 << 24):
        return None
    for (v, lo, hi, _), reason in _SPECIAL:
        if v == version and lo <= first and last <= hi:
            return reason
    return None


def connected_subnets(
    interface_addresses: Iterable[str], node_networks: Iterable[str] = ()
) -> tuple[str, ...]:
    """The subnets this node is directly connected to, sorted and canonical.

    ``interface_addresses`` are the kernel's addresses in interface form (``10.0.0.11/24``); host-length,
    special-purpose (link-local, loopback, ...) and unparsable ones make no subnet. ``node_networks`` are the
    Node resource's subnets (``NodeIntent.ipv4_network`` / ``ipv6_network``; "" is skipped)."""
    found: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for text in (*interface_addresses, *node_networks):
        if not text:
            continue
        try:
            net = ipaddress.ip_interface(text).network
        except ValueError:
            continue
        if net.prefixlen == net.max_prefixlen or net.prefixlen == 0:
            continue  # a host address, or an address claiming the whole Internet as its link
        if special_class(net.with_prefixlen) is not None:
            continue
        found.add(net)
    return tuple(n.with_prefixlen for n in sorted(found, key=lambda n: (n.version, n)))


@dataclass(frozen=True)
class GuardRules:
    """The rules for one state of the node: its connected subnets and its own blocks."""

    connected: tuple[str, ...] = ()  # canonical CIDRs, as ``connected_subnets`` returns them
    own_blocks: tuple[str, ...] = ()
    _connected: tuple[tuple[_Span, str], ...] = field(init=False, repr=False, compare=False)
    _blocks: tuple[_Span, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_connected", tuple((_span(c), c) for c in self.connected))
        object.__setattr__(self, "_blocks", tuple(_span(b) for b in self.own_blocks))

    def refusal(self, prefix: str) -> Refusal | None:
        """Why ``prefix`` must not be imported, or None when it may."""
        if "%" in prefix:  # ipaddress accepts (and keeps) an IPv6 scope id; no route has one
            return Refusal(MALFORMED, f"{MALFORMED}: scope id in a prefix")
        try:
            version, first, last, length = _span(prefix)
        except (ValueError, TypeError):
            return Refusal(MALFORMED, f"{MALFORMED}: not a prefix")
        reason = _special(version, first, last)
        if reason is not None:
            return Refusal(reason, f"{reason} address")
        for (v, lo, hi, plen), cidr in self._connected:
            if v == version and lo <= first and last <= hi and length > plen:
                if any(bv == version and blo <= first and last <= bhi for bv, blo, bhi, _ in self._blocks):
                    return None
                return Refusal(ON_LINK, f"{ON_LINK}: more specific than connected subnet {cidr}")
        return None


class ImportScreen:
    """The guard as the speaker holds it: current rules plus the prefixes refused at their last selection.

    Bounded by the Adj-RIB-In: a prefix is held here only while some peer's path for it is. Verdicts are
    kept until the rules change: a full recomputation (any kernel or intent change) selects every prefix
    again, and parsing 100k prefixes each time would cost more than the selection itself."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = LogBudget(log, clock=clock)  # a peer decides how many refusals there are
        self._interfaces: tuple[str, ...] = ()
        self._node_networks: tuple[str, ...] = ()
        self._rules = GuardRules()
        self._verdicts: dict[str, Refusal | None] = {}
        self.refused: dict[str, Refusal] = {}

    @property
    def rules(self) -> GuardRules:
        return self._rules

    def set_interface_addresses(self, addresses: Iterable[str]) -> bool:
        """The kernel's interface addresses changed; True when the rules did."""
        self._interfaces = tuple(sorted(addresses))
        return self._rebuild(self._rules.own_blocks)

    def set_node(self, node_networks: Iterable[str], own_blocks: Iterable[str]) -> bool:
        """The intent changed (the Node's subnets, our blocks); True when the rules did."""
        self._node_networks = tuple(n for n in node_networks if n)
        return self._rebuild(tuple(sorted(own_blocks)))

    def _rebuild(self, own_blocks: tuple[str, ...]) -> bool:
        rules = GuardRules(connected_subnets(self._interfaces, self._node_networks), own_blocks)
        if rules == self._rules:
            return False
        self._rules = rules
        self._verdicts.clear()
        return True

    def forget(self, prefix: str) -> None:
        """No path for ``prefix`` is held any more."""
        self.refused.pop(prefix, None)
        self._verdicts.pop(prefix, None)

    def refuses(self, prefix: str, paths: Sequence[Path]) -> bool:
        """Screen ``prefix`` at selection time; ``paths`` are the ones held for it (none: it is gone).
        Records (or forgets) the refusal for the report, logs a new one, and returns True when the paths must
        not be selected."""
        if not paths:
            self.forget(prefix)
            return False
        try:
            refusal = self._verdicts[prefix]
        except KeyError:
            refusal = self._verdicts[prefix] = self._rules.refusal(prefix)
        if refusal is None:
            self.refused.pop(prefix, None)
            return False
        if self.refused.get(prefix) != refusal:
            self._log.warning(
                "route %r from %s refused by the import guard (%s): not installed, not advertised",
                prefix[:60], ", ".join(sorted({p.peer for p in paths})), refusal,
            )
        self.refused[prefix] = refusal
        return True
