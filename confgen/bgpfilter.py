"""BGPFilter resources: parsing and validation into frozen rules.

Stage: part of the model (``confgen.model.parse_snapshot``). Sessions carry only the *names* of their
filters (``PeerIntent.filters``); applying the rules is the RIB's job, which reads them from here.

Owns: ``BGPFilter``, ``FilterRule`` and ``parse_bgp_filter``.

Complicating factors:
- Four rule lists (exportV4, importV4, exportV6, importV6); a CIDR must match its list's family, and
  ``cidr`` and ``matchOperator`` only make sense together.
- ``prefixLength`` bounds default to the CIDR's own length and the family maximum, and must stay within
  them (min <= max).
- Operations (addCommunity, prependASPath, setPriority) are only allowed on Accept rules, and each one
  names exactly one operation, as in Calico v3.32.
- Interface globs are matched against kernel interface names, so only the characters those can hold
  plus glob metacharacters are accepted.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from confgen.validate import Reader, parse_as_number, parse_community, show

ACTIONS = ("Accept", "Reject")
MATCH_OPERATORS = ("Equal", "NotEqual", "In", "NotIn")
PEER_TYPES = ("eBGP", "iBGP")
SOURCES = ("RemotePeers",)
RULE_LISTS = {"exportV4": 4, "importV4": 4, "exportV6": 6, "importV6": 6}
MAX_PRIORITY = 2**31 - 1
_INTERFACE_GLOB_RE = re.compile(r"[A-Za-z0-9_.:*?+-]{1,64}")


@dataclass(frozen=True)
class FilterRule:
    action: str  # Accept | Reject
    cidr: str = ""
    match_operator: str = ""  # Equal | NotEqual | In | NotIn, with cidr
    prefix_length: tuple[int, int] | None = None  # (min, max), with cidr
    source: str = ""  # "" | RemotePeers
    interface: str = ""  # glob on the outgoing interface name
    peer_type: str = ""  # "" | eBGP | iBGP
    communities: tuple[str, ...] = ()  # route must carry these
    as_path_prefix: tuple[int, ...] = ()
    priority: int | None = None
    operations: tuple[
        tuple[str, str], ...
    ] = ()  # ("addCommunity", "65000:1"), ("prependASPath", "65000 65000"),
    #                                               ("setPriority", "100")


@dataclass(frozen=True)
class BGPFilter:
    name: str
    export_v4: tuple[FilterRule, ...] = ()
    import_v4: tuple[FilterRule, ...] = ()
    export_v6: tuple[FilterRule, ...] = ()
    import_v6: tuple[FilterRule, ...] = ()


def parse_bgp_filter(name: str, raw: Any) -> BGPFilter:
    r = Reader("BGPFilter", name, raw)
    lists = {}
    for list_name, version in RULE_LISTS.items():
        path = f"spec.{list_name}"
        lists[list_name] = tuple(
            _rule(r, f"{path}[{i}]", rule, version) for i, rule in enumerate(r.items(path))
        )
    return BGPFilter(
        name=name,
        export_v4=lists["exportV4"],
        import_v4=lists["importV4"],
        export_v6=lists["exportV6"],
        import_v6=lists["importV6"],
    )


def _rule(r: Reader, path: str, raw: Any, version: int) -> FilterRule:
    rule = r.child(path, raw)
    action = rule.choice("action", ACTIONS, "")
    if not action:
        raise rule.error("action", "is required")
    cidr, operator, prefix_length = _cidr_match(rule, version)
    interface = rule.get("interface", "")
    if interface and (not isinstance(interface, str) or not _INTERFACE_GLOB_RE.fullmatch(interface)):
        raise rule.error("interface", f"{show(interface)} is not an interface name glob")
    communities = []
    for i, value in enumerate(rule.items("communities.values")):
        parsed = parse_community(value)
        if parsed is None:
            raise rule.error(f"communities.values[{i}]", f"{show(value)} is not a community")
        communities.append(parsed[1])
    as_path = []
    for i, value in enumerate(rule.items("asPathPrefix")):
        asn = parse_as_number(value)
        if asn is None:
            raise rule.error(f"asPathPrefix[{i}]", f"{show(value)} is not an AS number")
        as_path.append(asn)
    operations = tuple(
        _operation(rule, f"operations[{i}]", op) for i, op in enumerate(rule.items("operations"))
    )
    if operations and action != "Accept":
        raise rule.error("operations", "are only allowed on Accept rules")
    return FilterRule(
        action=action,
        cidr=cidr,
        match_operator=operator,
        prefix_length=prefix_length,
        source=rule.choice("source", SOURCES, ""),
        interface=interface,
        peer_type=rule.choice("peerType", PEER_TYPES, ""),
        communities=tuple(communities),
        as_path_prefix=tuple(as_path),
        priority=rule.integer("priority", 0, MAX_PRIORITY),
        operations=operations,
    )


def _cidr_match(rule: Reader, version: int) -> tuple[str, str, tuple[int, int] | None]:
    raw_cidr = rule.get("cidr", "")
    operator = rule.choice("matchOperator", MATCH_OPERATORS, "")
    if not raw_cidr and not operator:
        if rule.get("prefixLength", None) is not None:
            raise rule.error("prefixLength", "needs cidr")
        return "", "", None
    if not raw_cidr or not operator:
        raise rule.error(
            "cidr" if not raw_cidr else "matchOperator", "is required with the other (cidr, matchOperator)"
        )
    cidr = rule.cidr("cidr", raw_cidr)
    network = ipaddress.ip_network(cidr)
    if network.version != version:
        raise rule.error("cidr", f"{cidr} is not an IPv{version} network")
    if rule.get("prefixLength", None) is None:
        return cidr, operator, None
    low, high = network.prefixlen, network.max_prefixlen
    minimum = rule.integer("prefixLength.min", low, high)
    maximum = rule.integer("prefixLength.max", low, high)
    minimum = low if minimum is None else minimum
    maximum = high if maximum is None else maximum
    if minimum > maximum:
        raise rule.error("prefixLength", f"min {minimum} is greater than max {maximum}")
    return cidr, operator, (minimum, maximum)


def _operation(rule: Reader, where: str, op: Any) -> tuple[str, str]:
    if not isinstance(op, dict) or len(op) != 1:
        raise rule.error(where, "must hold exactly one of addCommunity, prependASPath, setPriority")
    ((kind, body),) = op.items()
    body_reader = rule.child(f"{where}.{kind}", body)
    if kind == "addCommunity":
        parsed = parse_community(body_reader.get("value", None))
        if parsed is None:
            raise body_reader.error("value", f"{show(body_reader.get('value', None))} is not a community")
        return kind, parsed[1]
    if kind == "prependASPath":
        prefix = body_reader.items("prefix")
        asns = [parse_as_number(a) for a in prefix]
        if not asns or None in asns:
            raise body_reader.error("prefix", f"{show(prefix)} is not a non-empty list of AS numbers")
        return kind, " ".join(str(a) for a in asns)
    if kind == "setPriority":
        value = body_reader.integer("value", 0, MAX_PRIORITY)
        if value is None:
            raise body_reader.error("value", "is required")
        return kind, str(value)
    raise rule.error(where, f"{show(kind)} is not one of addCommunity, prependASPath, setPriority")
