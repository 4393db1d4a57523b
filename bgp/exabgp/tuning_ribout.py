"""ExaBGP's Adj-RIB-Out cache with one small entry per plain route instead of three objects: the
``ribout_compact`` adjustment ``bgp.exabgp.tuning`` applies.

Stage: the BGP engine's process (runs inside the ExaBGP child, never in the daemon).

Owns: how ``exabgp.rib.cache.Cache`` stores the routes it has sent (``_seen``: family -> route index ->
route). Upstream keeps each announced route's ``Change``, ``INET`` and ``CIDR`` objects while the route stays
announced, about 460 bytes a route (46 MB for the 100k routes an exporting node announces); they serve route
refresh, the resend after a reconnect and the "already sent" check. A plain unicast route (``INET``, no path
id: every route the daemon sends) is given back entirely by its index, the cache's key, which ends in the
prefix length and the prefix bytes, and by what it shares with the other routes of its command: type,
family, next hop, attributes and netmask object. So the entry is the key and a shared ``Template``, and the
route is rebuilt, equal to the one stored, whenever a reader asks for it.

How: ``_seen`` becomes a ``Families`` mapping whose ``setdefault`` makes ``Routes`` mappings; ``Routes``
stores templates and answers ``get``/``values``/``items``/``pop``/``[]`` with rebuilt routes. Upstream's
``in_cache``, ``update_cache``, ``cached_changes`` and ``delete_cached_family`` run unchanged on top;
``update_cache`` is wrapped only to drop a withdrawn route before upstream pops it (whose answer it ignores),
so that a withdraw rebuilds nothing.

Complicating factors:
- The result must be what upstream stored: same index, type, family, prefix bytes and netmask, the same next
  hop and attributes objects, action ANNOUNCE. ``tests/unit/bgp/test_exabgp_tuning_ribout.py`` runs
  ExaBGP's own ``OutgoingRIB`` both ways on the same changes, resend and reconnect included.
- Anything else is stored as upstream stores it: another NLRI type, a path id, an attribute the route
  carries beyond the plain six, a prefix whose bytes the index does not give back. ``CIDR``'s fields are
  checked once, on the class (ExaBGP sets fields only on NLRI objects, through ``NLRI.assign``).
- A rebuilt route is a new object each time; upstream's readers copy or re-store what they read (route
  refresh sends it, ``del_from_rib`` deep-copies it, ``replace_restart`` stores it again), none mutates it.
- Templates are interned by the identity of the shared objects; a template holds them, so an identity cannot
  be reused while its template is known. Bounded at ``TEMPLATES``; past it, sharing starts over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

TEMPLATES = 4096
INDEX_ATTR = "_Change__index"  # Change keeps its index in a name-mangled attribute
NLRI_FIELDS = frozenset({"afi", "safi", "action", "path_info", "cidr", "nexthop"})
CIDR_FIELDS = frozenset({"_packed", "mask", "_ip"})  # _ip: the text form, cached when first asked for
# The Cache methods that read or write _seen, and the dict methods they may call on it and its members.
CACHE_METHODS = (
    "__init__",
    "clear_cache",
    "delete_cached_family",
    "cached_changes",
    "in_cache",
    "update_cache",
)
DICT_CALLS = frozenset({"get", "setdefault", "pop", "values", "keys", "items"})


class Template:
    """What the plain routes of one command share; enough, with a route's index, to rebuild the route."""

    __slots__ = ("klass", "afi", "safi", "nexthop", "attributes", "mask", "size", "pad", "build")

    def __init__(self, nlri: Any, attributes: Any, size: int, width: int, build: Callable[..., Any]) -> None:
        self.klass, self.afi, self.safi = type(nlri), nlri.afi, nlri.safi
        self.nexthop, self.attributes, self.mask = nlri.nexthop, attributes, nlri.cidr.mask
        self.size, self.pad = size, bytes(width - size)
        self.build = build

    def route(self, index: bytes) -> Any:
        return self.build(self, index[len(index) - self.size :] + self.pad, index)


def _rebuilt(value: Any, index: bytes) -> Any:
    return value.route(index) if type(value) is Template else value


class Routes(dict):
    """route index -> route, holding a ``Template`` for a plain route (see the module docstring)."""

    __slots__ = ()
    compact: Callable[[Any, Any], Any] = staticmethod(lambda index, change: change)

    def __setitem__(self, index: Any, change: Any) -> None:
        dict.__setitem__(self, index, self.compact(index, change))

    def __getitem__(self, index: Any) -> Any:
        return _rebuilt(dict.__getitem__(self, index), index)

    def get(self, index: Any, default: Any = None) -> Any:
        value = dict.get(self, index, default)
        return value.route(index) if type(value) is Template else value

    def pop(self, index: Any, *default: Any) -> Any:
        return _rebuilt(dict.pop(self, index, *default), index)

    def values(self) -> Iterator[Any]:  # type: ignore[override]
        return (_rebuilt(value, index) for index, value in dict.items(self))

    def items(self) -> Iterator[tuple[Any, Any]]:  # type: ignore[override]
        return ((index, _rebuilt(value, index)) for index, value in dict.items(self))


class Families(dict):
    """family -> ``Routes``: upstream's ``setdefault(family, {})`` gets a ``Routes`` instead of the ``{}``."""

    __slots__ = ()

    def setdefault(self, family: Any, default: Any = None) -> Any:
        found = dict.get(self, family)
        if found is None:
            found = dict.setdefault(self, family, Routes())
        return found


def _names(method: Any) -> set[str]:
    code = method.__code__
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= set(const.co_names)
    return names


def compact_cache(original: Callable[..., Any]) -> Callable[..., Any]:
    """The adjustment: wraps ``Cache.__init__`` (returned) and ``Cache.clear_cache`` so that ``_seen`` is a
    ``Families``, and ``Cache.update_cache`` (see the module docstring). Raises AttributeError, patching
    nothing, when ExaBGP's classes are not as expected."""
    from exabgp.bgp.message import Action
    from exabgp.bgp.message.update.nlri import CIDR, INET
    from exabgp.bgp.message.update.nlri.qualifier import PathInfo
    from exabgp.protocol.family import AFI, SAFI
    from exabgp.rib.cache import Cache
    from exabgp.rib.change import Change

    missing = [name for name in CACHE_METHODS if not hasattr(Cache, name)]
    if not missing:
        # What upstream's methods call on _seen and its members: a call we do not answer would see templates.
        used = set().union(*(_names(getattr(Cache, name)) for name in CACHE_METHODS))
        missing += [f"Cache calls {name}" for name in sorted(used - DICT_CALLS) if name in dir(dict)]
    probe = Change(INET(AFI.ipv4, SAFI.unicast, Action.ANNOUNCE), None)
    probe.nlri.cidr = CIDR(bytes((10, 1, 2, 0)), 24)
    if not probe.index().endswith(bytes((24, 10, 1, 2))):
        missing.append("Change.index layout")
    if INDEX_ATTR not in vars(probe) or set(vars(probe)) != {"nlri", "attributes", INDEX_ATTR}:
        missing.append("Change.__index")
    if set(vars(probe.nlri)) != NLRI_FIELDS:
        missing.append("INET fields")
    if set(vars(CIDR(bytes(4), 32))) != CIDR_FIELDS or not hasattr(CIDR, "size"):
        missing.append("CIDR fields")
    if missing:
        raise AttributeError(f"no longer as expected: {', '.join(missing)}")

    announce, nopath, widths = Action.ANNOUNCE, PathInfo.NOPATH, {AFI.ipv4: 4, AFI.ipv6: 16}
    templates: dict[tuple[Any, ...], Template] = {}

    def build(template: Template, packed: bytes, index: bytes) -> Any:
        nlri = template.klass(template.afi, template.safi, announce)
        nlri.cidr = CIDR(packed, template.mask)
        nlri.nexthop = template.nexthop
        change = Change(nlri, template.attributes)
        setattr(change, INDEX_ATTR, index)
        return change

    last: list[Template | None] = [None]  # the routes of one command arrive together: most share the last

    def template_for(change: Any, nlri: Any, mask: Any) -> Template | None:
        key = (id(nlri.nexthop), id(change.attributes), id(mask), nlri.afi, nlri.safi)
        template = templates.get(key)
        if template is None:
            width = widths.get(nlri.afi)
            if width is None or len(vars(change)) != 3:
                return None
            if len(templates) >= TEMPLATES:
                templates.clear()
            template = templates[key] = Template(nlri, change.attributes, CIDR.size(mask), width, build)
        return template

    def compact(index: Any, change: Any) -> Any:
        # Cheapest tests first: this runs for every route the API announces to every peer.
        if type(change) is not Change:
            return change
        nlri = change.nlri
        if type(nlri) is not INET or nlri.path_info is not nopath or nlri.action != announce:
            return change
        cidr = nlri.cidr
        if type(cidr) is not CIDR or type(index) is not bytes:
            return change
        mask, template = cidr.mask, last[0]
        if (
            template is None
            or nlri.nexthop is not template.nexthop
            or change.attributes is not template.attributes
            or mask is not template.mask
            or nlri.afi != template.afi
            or nlri.safi != template.safi
        ):
            template = last[0] = template_for(change, nlri, mask)
            if template is None:
                return change
        packed, size = cidr._packed, template.size
        # The index ends in the prefix's significant bytes (checked on the class when the adjustment is
        # applied); the rest must be zeros, and the route must carry nothing a rebuilt one would not.
        if type(packed) is not bytes or packed[size:] != template.pad or len(vars(nlri)) != len(NLRI_FIELDS):
            return change
        return template

    Routes.compact = staticmethod(compact)
    clear_cache, update_cache = Cache.clear_cache, Cache.update_cache

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._seen = Families(self._seen)

    def clear(self: Any) -> None:
        clear_cache(self)
        self._seen = Families(self._seen)

    def update(self: Any, change: Any) -> Any:
        if self.cache and change.nlri.action != announce:
            # Upstream pops the withdrawn route and drops the answer: popped here first, nothing is rebuilt.
            routes = self._seen.get(change.nlri.family().afi_safi())
            if type(routes) is Routes:
                dict.pop(routes, change.index(), None)
        return update_cache(self, change)

    Cache.clear_cache, Cache.update_cache = clear, update
    return init
