"""API route commands whose attribute text was parsed before skip ExaBGP's parser: a wrapper
``bgp.exabgp.tuning`` applies (``api_cache``).

Stage: the BGP engine's process (runs inside the ExaBGP child, never in the daemon).

Owns: a bounded cache, keyed by a command's text before `` nlri `` and the family upstream gives its routes,
of what ExaBGP's parser made of that text: the route class, family, next hop and attribute set. The speaker
sends the same attribute text for every route of a pool, so after the first command each one-route
``announce|withdraw attributes ... nlri <prefix>`` (a workload coming or going) costs the prefix's checks
and one ``INET`` + ``Change``, instead of a pass of ExaBGP's configuration parser (~150 µs of the ~180 µs
ExaBGP's handler spends on such a command, measured with ``python -m bench.exabgp_micro``'s rig).

What a hit builds is what upstream's ``attributes`` loop builds for each prefix (the class and family of the
command's last prefix, its CIDR, the shared next hop and attribute set), as ``bgp.exabgp.tuning_api``
builds the other prefixes of a bulk command; a miss goes to the wrapped method (``api_bulk`` or upstream)
and its answer is kept only when every route in it is of that plain shape.

Complicating factors:
- Routes of different commands now share one attribute set (upstream shares it only within a command), so
  it must never change once parsed. ExaBGP mutates a route's attribute set in two places: the Adj-RIB-Out
  pops the internal ``watchdog``/``withdraw`` markers (``OutgoingRIB.add_to_rib_watchdog``), and
  ``Neighbor.remove_self`` rewrites the next hop, on a deep copy, for ``next-hop self``. A set holding any
  internal attribute (watchdog, withdraw, name, split) or a route with ``next-hop self`` is never kept, so
  the first finds nothing to pop and the second never meets a cached route; no other ExaBGP code writes to
  a parsed set (its lazily cached text and index are functions of the contents). The Adj-RIB-Out itself
  already treats equal sets as one (it groups routes by the set's index and sends one of them).
- Parsing is a function of the text alone (the API's configuration starts each command from a clean
  scope), so the key is the text itself; a command upstream refuses is never kept, and one that differs
  in any character is a different key and goes through the parser.
- A prefix ExaBGP's parser would refuse (host bits, a bad mask, another family than the last prefix's) or
  a tail that is not plain prefixes goes to the wrapped method whole, so its answer or error is upstream's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bgp.exabgp.tuning_api import NLRI, PER_ROUTE, packed_prefixes, routes_like

MAX_TEXTS = 512  # attribute texts kept: the speaker sends about one per pool and family (per peer group)


class TextCache:
    """At most ``size`` entries; when full, the oldest is dropped for a new one (a parse, not a failure)."""

    def __init__(self, size: int = MAX_TEXTS) -> None:
        self.size = size
        self._entries: dict[Any, Any] = {}

    def get(self, key: Any) -> Any:
        return self._entries.get(key)

    def put(self, key: Any, value: Any) -> None:
        if key not in self._entries and len(self._entries) >= self.size:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = value

    def __len__(self) -> int:
        return len(self._entries)


def cached_attributes(original: Callable[..., Any], size: int = MAX_TEXTS) -> Callable[..., Any]:
    """``API.api_attributes`` that keeps what the parser made of each attribute text (``size`` texts)."""
    from exabgp.bgp.message.update.attribute import Attributes
    from exabgp.bgp.message.update.nlri import INET
    from exabgp.bgp.message.update.nlri.qualifier import PathInfo
    from exabgp.protocol.ip import IP

    internal = frozenset(Attributes.INTERNAL)
    cache = TextCache(size)

    def template(changes: Any, count: int) -> tuple | None:
        """(class, afi, safi, next hop, attributes) when every route is of the plain shape a hit rebuilds."""
        if not isinstance(changes, list) or len(changes) != count:
            return None
        first = changes[0].nlri
        shape = (type(first), first.afi, first.safi, first.nexthop, changes[0].attributes)
        if shape[0] is not INET or getattr(first.nexthop, "SELF", True) or not internal.isdisjoint(shape[4]):
            return None
        for change in changes:
            nlri = change.nlri
            if (
                type(nlri) is not INET
                or nlri.path_info is not PathInfo.NOPATH
                or (nlri.afi, nlri.safi) != (shape[1], shape[2])
                or nlri.nexthop is not shape[3]
                or change.attributes is not shape[4]
            ):
                return None
        return shape

    def api_attributes(self, command, peers):
        at = command.rfind(NLRI)
        if at < 0:
            return original(self, command, peers)
        head, words = command[:at], command[at + len(NLRI) :].split(" ")
        v6 = ":" in words[-1]
        if any((":" in word) is not v6 for word in words) or not PER_ROUTE.isdisjoint(head.split()):
            return original(self, command, peers)
        packed = packed_prefixes(words, v6)
        if packed is None:
            return original(self, command, peers)
        address = words[-1].partition("/")[0]
        # Upstream takes every route's family from the last prefix's address text, with these two calls.
        key = (head, IP.toafi(address), IP.tosafi(address))
        shape = cache.get(key)
        if shape is None:
            changes = original(self, command, peers)
            shape = template(changes, len(words))
            if shape is not None:
                cache.put(key, shape)
            return changes
        return routes_like(shape, packed)

    api_attributes.cache = cache  # type: ignore[attr-defined]  # for tests and measurements
    return api_attributes
