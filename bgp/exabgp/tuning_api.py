"""Bulk API commands parsed once per attribute set, not once per prefix: wrappers ``bgp.exabgp.tuning``
applies.

Stage: the BGP engine's process (runs inside the ExaBGP child, never in the daemon).

Owns: the fast path of ``API.api_attributes`` for ``announce|withdraw attributes <attributes> nlri p1 p2
...``, the command the speaker sends for every attribute set (``bgp.exabgp.commands``). Upstream runs the
whole line through its configuration tokeniser, one character at a time, and then parses each prefix through
``IPRange`` (string splits, ``Resource`` cache keys, ``NetMask`` objects) before it builds the same
``INET`` + ``Change`` for each: about 60 % of the sending ExaBGP's API time in a 100k-route burst.

What we do: ExaBGP parses the attributes itself, from the same command cut down to its last prefix (upstream
takes the family of every prefix from the last one, so this is the route it would build first); we check
the other prefixes with the checks upstream's ``prefix`` makes (``inet_pton`` of the family, a netmask in
range, no host bits) and build their routes exactly as upstream's ``attributes`` loop does, sharing that
route's attributes and next hop as upstream's routes of one command share them.

Complicating factors: the result must be the very routes upstream builds (tests/unit/bgp/
test_exabgp_tuning_api.py compares both on a corpus). Everything the fast path is not sure of goes to
upstream unchanged, whole: a keyword that gives each prefix more than a CIDR (``rd``, ``label``,
``path-information``, ``split``), a token that is not a plain prefix, prefixes of two families, a prefix
upstream would refuse (so its own error is the one reported), a route that is not plain ``INET``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Any

NLRI = " nlri "
# Keywords after which upstream gives each prefix more than a CIDR and a next hop (or splits it).
PER_ROUTE = frozenset({"rd", "route-distinguisher", "label", "path-information", "split"})
_IPV4 = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}/[0-9]{1,3}")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+/[0-9]{1,3}")
_netmasks: dict[tuple[str, Any], Any] = {}  # (mask text, AFI) -> upstream's NetMask (a cached value too)


def _netmask(text: str, afi: Any) -> Any:
    from exabgp.protocol.ip.netmask import NetMask

    mask = _netmasks[(text, afi)] = NetMask.create(text, afi)
    return mask


def packed_prefixes(words: list[str], v6: bool) -> list[tuple[bytes, Any]] | None:
    """(address bytes, NetMask) per prefix, as upstream's ``prefix`` makes them; None if any would fail."""
    from exabgp.protocol.family import AFI

    shape, family, bits = (_IPV6, socket.AF_INET6, 128) if v6 else (_IPV4, socket.AF_INET, 32)
    afi = AFI.ipv6 if v6 else AFI.ipv4
    seen: dict[str, tuple[int, Any]] = {}  # length text -> (its host bits, upstream's NetMask)
    out = []
    for word in words:
        if not shape.fullmatch(word):
            return None
        address, _, length = word.partition("/")
        try:
            packed = socket.inet_pton(family, address)
        except OSError:
            return None
        known = seen.get(length)
        if known is None:
            size = int(length)
            if size > bits:
                return None
            mask = _netmasks.get((length, afi)) or _netmask(length, afi)
            known = seen[length] = ((1 << (bits - size)) - 1, mask)
        host, mask = known
        if host and int.from_bytes(packed, "big") & host:
            return None
        out.append((packed, mask))
    for _, mask in seen.values():
        # Upstream's NetMask values are shared by both families, and parsing a prefix sets the width of its
        # family on its mask: leave them as upstream's parse of these prefixes would.
        mask.maximum = bits
    return out


def _plain(change: Any) -> bool:
    from exabgp.bgp.message.update.attribute import Attribute
    from exabgp.bgp.message.update.nlri import INET
    from exabgp.bgp.message.update.nlri.qualifier import PathInfo

    nlri = change.nlri
    return (
        type(nlri) is INET
        and nlri.path_info is PathInfo.NOPATH
        and Attribute.CODE.INTERNAL_SPLIT not in change.attributes
    )


def routes_like(template: tuple, packed: list[tuple[bytes, Any]]) -> list[Any]:
    """ExaBGP's changes for the ``packed`` prefixes, each a route like ``template``'s (its NLRI class, family
    and next hop; one attribute set shared by all), as its configuration parser would have built them."""
    from exabgp.bgp.message import Action
    from exabgp.bgp.message.update.nlri import CIDR
    from exabgp.rib.change import Change

    klass, afi, safi, nexthop, attributes = template
    changes = []
    for address, mask in packed:
        nlri = klass(afi, safi, Action.UNSET)
        nlri.cidr = CIDR(address, mask)
        nlri.nexthop = nexthop
        changes.append(Change(nlri, attributes))
    return changes


def bulk_attributes(original: Callable[..., Any]) -> Callable[..., Any]:
    """``API.api_attributes`` that parses the attributes once and builds the other prefixes' routes."""

    def api_attributes(self, command, peers):
        at = command.rfind(NLRI)
        if at < 0:
            return original(self, command, peers)
        head, words = command[:at], command[at + len(NLRI) :].split(" ")
        v6 = ":" in words[-1]
        if len(words) < 2 or not PER_ROUTE.isdisjoint(head.split()):
            return original(self, command, peers)
        if any((":" in word) is not v6 for word in words):  # two families: upstream's answer, whatever it is
            return original(self, command, peers)
        packed = packed_prefixes(words, v6)
        if packed is None:
            return original(self, command, peers)
        first = original(self, f"{head}{NLRI}{words[-1]}", peers)
        if len(first) != 1 or not _plain(first[0]):
            return original(self, command, peers)
        nlri = first[0].nlri
        return routes_like((type(nlri), nlri.afi, nlri.safi, nlri.nexthop, first[0].attributes), packed)

    return api_attributes


# The collaborators upstream's route-attribute command handlers call: if one of them is gone from the
# installed handlers, ours (which call the same ones) would not do what upstream does, and are not used.
HANDLER_NAMES = frozenset(
    {"extract_neighbors", "match_neighbors", "api_attributes", "inject_change", "log_message", "log_failure",
     "answer_done", "answer_error", "schedule", "extensive"}
)


def _names(code: Any) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names(const)
    return names


def fits(handler: Callable[..., Any]) -> bool:
    """Whether an installed command handler calls what ours calls (checked before ours replaces it)."""
    return _names(handler.__code__) >= HANDLER_NAMES


def _routine(api: Any, what: str, listed: str, change: Any, lazy: bool) -> None:
    """Upstream's line for a route it took; when it goes out at DEBUG (``lazy``), built only to be written."""
    if lazy:
        from exabgp.logger import log

        log.debug(lambda: f"{what} {listed} : {change.extensive()}", "processes")
    else:
        api.log_message(f"{what} {listed} : {change.extensive()}")


def route_handler(announce: bool, debug_only: Callable[[Any], bool]) -> Callable[..., Any]:
    """The ``announce attributes`` (or ``withdraw attributes``) handler, as upstream's but for one thing: the
    per-route log line is not built when it goes out at DEBUG (``debug_only``) and DEBUG is off. At 100k
    routes that line is ~20 % of the API time: each route's full text, built only to be dropped."""
    from exabgp.bgp.message import Action
    from exabgp.logger.option import option
    from exabgp.reactor.api.command.limit import extract_neighbors, match_neighbors

    def handler(self, reactor, service, line, use_json):
        def callback():
            try:
                descriptions, command = extract_neighbors(line)
                peers = match_neighbors(reactor.peers(service), descriptions)
                if not peers:
                    self.log_failure(f"no neighbor matching the command : {command}")
                    reactor.processes.answer_error(service)
                    yield True
                    return
                changes = self.api_attributes(command, peers)
                if not changes:
                    self.log_failure(f"command could not parse route in : {command}")
                    reactor.processes.answer_error(service)
                    yield True
                    return
                lazy = debug_only(self)
                # At DEBUG with DEBUG off, ExaBGP's logger would drop the line unread: no call at all.
                silent = lazy and not option.log_enabled("processes", "DEBUG")
                listed = ", ".join(peers) if peers else "all peers"
                for change in changes:
                    if announce:
                        change.nlri.action = Action.ANNOUNCE
                        reactor.configuration.inject_change(peers, change)
                        if not silent:
                            _routine(self, "route added to", listed, change, lazy)
                    else:
                        change.nlri.action = Action.WITHDRAW
                        if not reactor.configuration.inject_change(peers, change):
                            self.log_failure(f"route not found on {listed} : {change.extensive()}")
                        elif not silent:
                            _routine(self, "route removed from", listed, change, lazy)
                    yield False
                reactor.processes.answer_done(service)
            except (ValueError, IndexError):
                self.log_failure("issue parsing the route")
                reactor.processes.answer_error(service)
                yield True

        reactor.asynchronous.schedule(service, line, callback())
        return True

    return handler
